//! One training step: plain vs FGM vs gradient penalty vs Hutchinson (1 probe, trained through), on an
//! MLP (512-512-512-10, GELU, batch 256) and a small embedding model (vocab 5000, width 128, 32 tokens,
//! batch 32), f32 on the CPU. Run with `cargo bench --bench step`.
//!
//! Criterion first reports each method's time distribution. Then, because a shared machine drifts over
//! the minutes criterion takes, the ratios to the plain step come from a second phase that alternates
//! the methods within each round (rotating the order) and takes medians over rounds. Second order is on
//! (as `.cargo/config.toml` sets it), as gradient penalty needs.

use advtrain::toy::{Activation, EmbeddingClassifier, Mlp, classification_batch};
use advtrain::{CurvatureMethod, Fgm, GradientPenalty, Laplacian, PenaltyMethod, Rng, Target};
use candle_core::{DType, Device, Tensor};
use criterion::Criterion;
use std::hint::black_box;
use std::time::{Duration, Instant};

const METHODS: [&str; 6] = [
    "plain",
    "fgm",
    "gradient_penalty",
    "gradient_penalty_fd",
    "hutchinson_1",
    "hutchinson_1_fd",
];

fn run_method<F>(name: &str, target: &Target, loss: &F, rng: &mut Rng)
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let grads = match name {
        "plain" => target.loss(loss).unwrap().backward().unwrap(),
        "fgm" => Fgm::new(0.5).unwrap().step(target, loss).unwrap().grads,
        "gradient_penalty" => {
            GradientPenalty::new(0.5)
                .unwrap()
                .step(target, loss)
                .unwrap()
                .grads
        }
        "gradient_penalty_fd" => {
            GradientPenalty::new(0.5)
                .unwrap()
                .with_method(PenaltyMethod::FiniteDifference { h: 1e-2 })
                .unwrap()
                .step(target, loss)
                .unwrap()
                .grads
        }
        "hutchinson_1" => {
            Laplacian::new(0.1)
                .unwrap()
                .step(target, loss, rng)
                .unwrap()
                .grads
        }
        "hutchinson_1_fd" => {
            Laplacian::new(0.1)
                .unwrap()
                .with_method(CurvatureMethod::FiniteDifference { h: 1e-1 })
                .unwrap()
                .step(target, loss, rng)
                .unwrap()
                .grads
        }
        other => panic!("unknown method {other}"),
    };
    black_box(grads);
}

fn configure<'a>(
    c: &'a mut Criterion,
    group: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(group);
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g
}

fn mlp(c: &mut Criterion) {
    let device = Device::Cpu;
    let model = Mlp::new(
        &[512, 512, 512, 10],
        Activation::GeluErf,
        1,
        DType::F32,
        &device,
    )
    .unwrap();
    let mut rng = Rng::new(2);
    let (x, y) = classification_batch(256, 512, 10, DType::F32, &device, &mut rng).unwrap();
    let loss = |x: &Tensor| model.loss(x, &y);
    let mut group = configure(c, "mlp");
    for method in METHODS {
        group.bench_function(method, |b| {
            b.iter(|| run_method(method, &Target::input(&x).unwrap(), &loss, &mut rng))
        });
    }
    group.finish();
}

fn embedding(c: &mut Criterion) {
    let device = Device::Cpu;
    let model = EmbeddingClassifier::new(5000, 128, 4, 3, DType::F32, &device).unwrap();
    let mut rng = Rng::new(4);
    let batch = model.batch(32, 32, 4, &mut rng).unwrap();
    let loss = |e: &Tensor| model.loss_from_embeddings(e, &batch.mask, &batch.labels);
    let mut group = configure(c, "embedding");
    for method in METHODS {
        group.bench_function(method, |b| {
            b.iter(|| {
                // The embedding lookup is part of every step.
                let e = model.embed(&batch.ids).unwrap();
                let target = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
                run_method(method, &target, &loss, &mut rng)
            })
        });
    }
    group.finish();
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

fn print_ratios(rounds: usize) {
    let device = Device::Cpu;
    let mlp = Mlp::new(
        &[512, 512, 512, 10],
        Activation::GeluErf,
        1,
        DType::F32,
        &device,
    )
    .unwrap();
    let mut rng = Rng::new(2);
    let (x, y) = classification_batch(256, 512, 10, DType::F32, &device, &mut rng).unwrap();
    let mlp_loss = |x: &Tensor| mlp.loss(x, &y);
    let mlp_ms = interleaved(rounds, |m| {
        run_method(m, &Target::input(&x).unwrap(), &mlp_loss, &mut rng)
    });
    let model = EmbeddingClassifier::new(5000, 128, 4, 3, DType::F32, &device).unwrap();
    let batch = model.batch(32, 32, 4, &mut rng).unwrap();
    let loss = |e: &Tensor| model.loss_from_embeddings(e, &batch.mask, &batch.labels);
    let embedding_ms = interleaved(rounds, |m| {
        let e = model.embed(&batch.ids).unwrap();
        let target = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
        run_method(m, &target, &loss, &mut rng)
    });
    println!("\nstep time as a ratio to the plain step: medians of {rounds} interleaved rounds");
    println!("| method | MLP ms | MLP ratio | embedding ms | embedding ratio |");
    println!("|---|---|---|---|---|");
    for (i, method) in METHODS.iter().enumerate() {
        println!(
            "| {method} | {:.2} | {:.2}x | {:.2} | {:.2}x |",
            mlp_ms[i],
            mlp_ms[i] / mlp_ms[0],
            embedding_ms[i],
            embedding_ms[i] / embedding_ms[0]
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    mlp(&mut criterion);
    embedding(&mut criterion);
    criterion.final_summary();
    print_ratios(25);
}
