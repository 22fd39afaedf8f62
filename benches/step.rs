//! One training step: plain vs FGM vs gradient penalty vs Hutchinson (1 probe, trained through), on an
//! MLP (512-512-512-10, GELU, batch 256) and a small embedding model (vocab 5000, width 128, 32 tokens,
//! batch 32), f32 on the CPU. Run with `cargo bench --bench step`.
//!
//! Criterion first reports each method's time distribution. Then, because a shared machine drifts over
//! the minutes criterion takes, the ratios to the plain step come from a second phase that alternates
//! the methods within each round (rotating the order) and takes medians over rounds. Second order is on
//! (as `.cargo/config.toml` sets it), as gradient penalty needs.

use advtrain::toy::{Activation, EmbeddingClassifier, Mlp, TokenBatch, classification_batch};
use advtrain::{Batch, Method};
use advtrain::{
    CurvatureMethod, Fgm, FreeAt, FreeLb, GradientPenalty, Laplacian, PenaltyMethod, Pgd, Rng,
    Smart, SmartDivergence, Target, Vat, Yopo,
};
use candle_core::{DType, Device, Tensor};
use criterion::Criterion;
use std::hint::black_box;
use std::time::{Duration, Instant};

const METHODS: [&str; 12] = [
    "plain",
    "fgm",
    "gradient_penalty",
    "gradient_penalty_fd",
    "hutchinson_1",
    "hutchinson_1_fd",
    "pgd_3",
    "freeat_replay",
    "yopo_3_3",
    "freelb_3",
    "smart",
    "vat",
];

/// The cost rule of each method, in plain steps (`None`: no simple rule).
fn expected_ratio(method: &str) -> Option<f64> {
    match method {
        "plain" => Some(1.0),
        "fgm" => Some(2.0),
        "pgd_3" => Some(4.0),
        "freeat_replay" => Some(1.0),
        "freelb_3" => Some(3.0),
        "vat" => Some(3.0),
        "smart" => Some(3.0),
        _ => None,
    }
}

/// The model as the methods see it: the loss of the perturbed point, its logits, the task loss on
/// logits, and the split into a first layer and the rest (for YOPO).
struct Closures<'a> {
    loss: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    logits: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    task: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    first: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    rest: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
}

fn run_method(name: &str, target: &Target, c: &Closures, free_at: &mut FreeAt, rng: &mut Rng) {
    let loss = &c.loss;
    let grads = match name {
        "plain" => target.loss(loss).unwrap().backward().unwrap(),
        "fgm" => {
            Fgm::new(0.5)
                .unwrap()
                .step(&Batch::new(target, loss), &mut Rng::new(0))
                .unwrap()
                .grads
        }
        "gradient_penalty" => {
            GradientPenalty::new(0.5)
                .unwrap()
                .step(&Batch::new(target, loss), &mut Rng::new(0))
                .unwrap()
                .grads
        }
        "gradient_penalty_fd" => {
            GradientPenalty::new(0.5)
                .unwrap()
                .with_method(PenaltyMethod::FiniteDifference { h: 1e-2 })
                .unwrap()
                .step(&Batch::new(target, loss), &mut Rng::new(0))
                .unwrap()
                .grads
        }
        "hutchinson_1" => {
            Laplacian::new(0.1)
                .unwrap()
                .step(&Batch::new(target, loss), rng)
                .unwrap()
                .grads
        }
        "hutchinson_1_fd" => {
            Laplacian::new(0.1)
                .unwrap()
                .with_method(CurvatureMethod::FiniteDifference { h: 1e-1 })
                .unwrap()
                .step(&Batch::new(target, loss), rng)
                .unwrap()
                .grads
        }
        "pgd_3" => {
            Pgd::new(0.5, 0.2, 3)
                .unwrap()
                .step(&Batch::new(target, &loss), rng)
                .unwrap()
                .grads
        }
        "freeat_replay" => {
            free_at
                .step(&Batch::new(target, &loss), &mut Rng::new(0))
                .unwrap()
                .grads
        }
        "yopo_3_3" => {
            Yopo::new(0.05, 0.02, 3, 3)
                .unwrap()
                .step(
                    &Batch::new(target, &c.rest).with_first_layer(&c.first, &c.rest),
                    rng,
                )
                .unwrap()
                .grads
        }
        "freelb_3" => {
            FreeLb::new(0.1, 3)
                .unwrap()
                .step(&Batch::new(target, &loss), rng)
                .unwrap()
                .grads
        }
        "smart" => {
            Smart::new(1.0, SmartDivergence::SymmetricKl)
                .unwrap()
                .step(&Batch::with_outputs(target, &c.logits, &c.task), rng)
                .unwrap()
                .grads
        }
        "vat" => {
            Vat::new(0.5)
                .unwrap()
                .with_xi(1e-2)
                .unwrap()
                .step(&Batch::with_outputs(target, &c.logits, &c.task), rng)
                .unwrap()
                .grads
        }
        other => panic!("unknown method {other}"),
    };
    black_box(grads);
}

/// The two benchmarked models with their batches, built once.
struct Models {
    mlp: Mlp,
    x: Tensor,
    y: Tensor,
    embedding: EmbeddingClassifier,
    batch: TokenBatch,
}

impl Models {
    fn new() -> Self {
        let device = Device::Cpu;
        let mut rng = Rng::new(2);
        let mlp = Mlp::new(
            &[512, 512, 512, 10],
            Activation::GeluErf,
            1,
            DType::F32,
            &device,
        )
        .unwrap();
        let (x, y) = classification_batch(256, 512, 10, DType::F32, &device, &mut rng).unwrap();
        let embedding = EmbeddingClassifier::new(5000, 128, 4, 3, DType::F32, &device).unwrap();
        let batch = embedding.batch(32, 32, 4, &mut rng).unwrap();
        Self {
            mlp,
            x,
            y,
            embedding,
            batch,
        }
    }

    /// One step of `method` on the MLP, perturbing its input; YOPO's first layer is the identity.
    fn mlp_step(&self, method: &str, free_at: &mut FreeAt, rng: &mut Rng) {
        let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &self.y);
        let logits = |x: &Tensor| self.mlp.forward(x);
        let loss = |x: &Tensor| self.mlp.loss(x, &self.y);
        let first = |x: &Tensor| Ok(x.clone());
        let c = Closures {
            loss: &loss,
            logits: &logits,
            task: &task,
            first: &first,
            rest: &loss,
        };
        run_method(method, &Target::input(&self.x).unwrap(), &c, free_at, rng)
    }

    /// One step of `method` on the embedding model, perturbing the embedding output; the lookup is
    /// part of every step. YOPO's first layer is the attention block.
    fn embedding_step(&self, method: &str, free_at: &mut FreeAt, rng: &mut Rng) {
        let (model, batch) = (&self.embedding, &self.batch);
        let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &batch.labels);
        let logits = |e: &Tensor| model.logits_from_embeddings(e, &batch.mask);
        let loss = |e: &Tensor| model.loss_from_embeddings(e, &batch.mask, &batch.labels);
        let first = |e: &Tensor| model.first_block(e, &batch.mask);
        let rest = |h: &Tensor| task(&model.head_logits(h, &batch.mask)?);
        let c = Closures {
            loss: &loss,
            logits: &logits,
            task: &task,
            first: &first,
            rest: &rest,
        };
        let e = model.embed(&batch.ids).unwrap();
        let target = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
        run_method(method, &target, &c, free_at, rng)
    }
}

type StepFn = fn(&Models, &str, &mut FreeAt, &mut Rng);

const GROUPS: [(&str, StepFn); 2] = [
    ("mlp", Models::mlp_step),
    ("embedding", Models::embedding_step),
];

fn criterion_groups(c: &mut Criterion, models: &Models) {
    let mut rng = Rng::new(3);
    let mut free_at = FreeAt::new(0.05, 3).unwrap();
    for (name, step) in GROUPS {
        let mut group = c.benchmark_group(name);
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        for method in METHODS {
            group.bench_function(method, |b| {
                b.iter(|| step(models, method, &mut free_at, &mut rng))
            });
        }
        group.finish();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians (ms) of `rounds` interleaved single steps of every method, in METHODS order.
fn interleaved(rounds: usize, mut step: impl FnMut(&str)) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(rounds); METHODS.len()];
    for method in METHODS {
        step(method); // warm-up
    }
    for round in 0..rounds {
        for k in 0..METHODS.len() {
            let i = (k + round) % METHODS.len();
            let started = Instant::now();
            step(METHODS[i]);
            times[i].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.into_iter().map(median).collect()
}

fn print_ratios(models: &Models, rounds: usize) {
    let mut rng = Rng::new(5);
    let mut free_at = FreeAt::new(0.05, 3).unwrap();
    let ms: Vec<Vec<f64>> = GROUPS
        .iter()
        .map(|(_, step)| interleaved(rounds, |m| step(models, m, &mut free_at, &mut rng)))
        .collect();
    println!("\nstep time as a ratio to the plain step: medians of {rounds} interleaved rounds");
    println!("| method | MLP ms | MLP ratio | embedding ms | embedding ratio | rule |");
    println!("|---|---|---|---|---|---|");
    for (i, method) in METHODS.iter().enumerate() {
        let rule = expected_ratio(method).map_or("-".to_string(), |r| format!("{r}x"));
        println!(
            "| {method} | {:.2} | {:.2}x | {:.2} | {:.2}x | {rule} |",
            ms[0][i],
            ms[0][i] / ms[0][0],
            ms[1][i],
            ms[1][i] / ms[1][0]
        );
    }
}

fn main() {
    let models = Models::new();
    let mut criterion = Criterion::default().configure_from_args();
    criterion_groups(&mut criterion, &models);
    criterion.final_summary();
    print_ratios(&models, 25);
}
