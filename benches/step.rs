//! One training step: plain vs FGM vs gradient penalty vs Hutchinson (1 probe, trained through), on an
//! MLP (512-512-512-10, GELU, batch 256) and a small embedding model (vocab 5000, width 128, 32 tokens,
//! batch 32), f32 on the CPU. Run with `cargo bench --bench step`; after criterion's own report it
//! prints each method's median time as a ratio to the plain step of the same model, measured in the
//! same run. Second order is on (as `.cargo/config.toml` sets it), as gradient penalty needs.

use advtrain::toy::{Activation, EmbeddingClassifier, Mlp, classification_batch};
use advtrain::{CurvatureMethod, Fgm, GradientPenalty, Laplacian, PenaltyMethod, Rng, Target};
use candle_core::{DType, Device, Tensor};
use criterion::Criterion;
use std::hint::black_box;
use std::time::Duration;

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

/// Median of a finished benchmark, read from criterion's report (nanoseconds).
fn median_ns(group: &str, method: &str) -> Option<f64> {
    let root = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{root}/criterion/{group}/{method}/new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_ratios() {
    println!("\nstep time as a ratio to the plain step (medians, this run)");
    println!(
        "{:<22} {:>14} {:>9} {:>14} {:>9}",
        "method", "mlp ms", "ratio", "embedding ms", "ratio"
    );
    let plain: Vec<Option<f64>> = ["mlp", "embedding"]
        .iter()
        .map(|g| median_ns(g, "plain"))
        .collect();
    for method in METHODS {
        let mut row = format!("{method:<22}");
        for (i, group) in ["mlp", "embedding"].iter().enumerate() {
            match (median_ns(group, method), plain[i]) {
                (Some(t), Some(p)) => row.push_str(&format!(" {:>14.2} {:>8.2}x", t / 1e6, t / p)),
                _ => row.push_str(&format!(" {:>14} {:>9}", "-", "-")),
            }
        }
        println!("{row}");
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    mlp(&mut criterion);
    embedding(&mut criterion);
    criterion.final_summary();
    print_ratios();
}
