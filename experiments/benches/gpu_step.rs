//! Step timings of a BERT-base-sized classifier (12 layers, width 768, 12 heads, sequence 128, batch
//! 32, f32) on the device `advtrain::device::select` picks: plain, FGM, gradient penalty and FreeLB-3,
//! perturbing the word-embedding output. Built into the GPU kit by `scripts/build-gpu-suite.sh` and
//! run on the GPU machine beside `scripts/torch_step.py` (the same model and steps in PyTorch).
//!
//! The methods alternate within each round (the order rotates) and the figure is the median over
//! rounds, so drift of a shared machine hits every method alike. A step is the loss and every
//! weight's gradient (no optimiser update), ended by reading the loss, which waits for the device.
//!
//! `cargo bench --bench gpu_step -- [--layers N] [--hidden N] [--batch N] [--seq N] [--rounds N]
//! [--gp-micro-batch N]`: the defaults are BERT-base's; small values check it on a CPU. Gradient
//! penalty keeps its double-backward graph, so it may run in micro-batches (its time is then the sum
//! over the batch, as a user would pay it).

use advtrain::models::{BertClassifier, BertConfig, Head, Pooling};
use advtrain::{Batch, Method};
use advtrain::{Fgm, FreeLb, GradientPenalty, Rng, Scope, Step, StepNorm, Target};
use candle_core::{DType, Tensor};
use std::time::Instant;

struct Settings {
    layers: usize,
    hidden: usize,
    batch: usize,
    seq: usize,
    rounds: usize,
    gp_micro_batch: usize,
}

fn settings() -> Settings {
    let mut s = Settings {
        layers: 12,
        hidden: 768,
        batch: 32,
        seq: 128,
        rounds: 10,
        gp_micro_batch: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || -> usize {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a count", args[i]))
        };
        match args[i].as_str() {
            "--layers" => s.layers = value(),
            "--hidden" => s.hidden = value(),
            "--batch" => s.batch = value(),
            "--seq" => s.seq = value(),
            "--rounds" => s.rounds = value(),
            "--gp-micro-batch" => s.gp_micro_batch = value(),
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    if s.gp_micro_batch == 0 {
        s.gp_micro_batch = s.batch;
    }
    s
}

const METHODS: [&str; 4] = ["plain", "fgm", "gradient_penalty", "freelb_3"];

fn main() -> advtrain::Result<()> {
    // SAFETY: set before any other thread exists; gradient penalty needs second order.
    unsafe { advtrain::second_order::enable_for_new_threads() };
    let s = settings();
    let (device, description) = advtrain::device::select();
    println!("device: {description}");
    let config = BertConfig {
        hidden_size: s.hidden,
        num_hidden_layers: s.layers,
        num_attention_heads: (s.hidden / 64).max(1),
        intermediate_size: 4 * s.hidden,
        ..BertConfig::minilm()
    };
    println!(
        "model: {} layers, width {}, {} heads; batch {} x {} tokens, f32; {} rounds; gradient penalty \
         in micro-batches of {}",
        s.layers, s.hidden, config.num_attention_heads, s.batch, s.seq, s.rounds, s.gp_micro_batch
    );
    let head = Head {
        classes: 2,
        pooling: Pooling::Mean,
    };
    let model = BertClassifier::new(config, head, 0, DType::F32, &device)?;
    model.mode.set_train(true);
    let mut rng = Rng::new(1);
    let ids = Tensor::from_vec(
        (0..s.batch * s.seq)
            .map(|_| 1000 + (rng.uniform_f64(0.0, 20_000.0) as u32))
            .collect::<Vec<u32>>(),
        (s.batch, s.seq),
        &device,
    )?;
    let mask = Tensor::ones((s.batch, s.seq), DType::F32, &device)?;
    let labels = Tensor::from_vec(
        (0..s.batch as u32).map(|i| i % 2).collect::<Vec<u32>>(),
        s.batch,
        &device,
    )?;
    let per_example = StepNorm::L2(Scope::PerExample);
    let step = |method: &str, rng: &mut Rng| -> advtrain::Result<f32> {
        let run = |rows: std::ops::Range<usize>, rng: &mut Rng| -> advtrain::Result<Step> {
            let n = rows.len();
            let (ids, mask, labels) = (
                ids.narrow(0, rows.start, n)?,
                mask.narrow(0, rows.start, n)?,
                labels.narrow(0, rows.start, n)?,
            );
            let target = Target::embedding_output(&model.embed(&ids)?, Some(&mask))?;
            let loss = |e: &Tensor| -> candle_core::Result<Tensor> {
                advtrain::fused::cross_entropy(&model.logits_from_embeddings(e, &mask)?, &labels)
            };
            match method {
                "plain" => advtrain::Plain.step(&Batch::new(&target, &loss), &mut Rng::new(0)),
                "fgm" => Fgm::new(1.0)?
                    .with_norm(per_example)
                    .step(&Batch::new(&target, &loss), &mut Rng::new(0)),
                "gradient_penalty" => GradientPenalty::new(1.0)?
                    .with_norm(per_example)
                    .step(&Batch::new(&target, &loss), &mut Rng::new(0)),
                _ => FreeLb::new(0.3, 3)?
                    .with_max_norm(1.0)?
                    .step(&Batch::new(&target, &loss), rng),
            }
        };
        let chunk = if method == "gradient_penalty" {
            s.gp_micro_batch
        } else {
            s.batch
        };
        let mut total = 0.0;
        for start in (0..s.batch).step_by(chunk) {
            let step = run(start..(start + chunk).min(s.batch), rng)?;
            total += step.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        }
        device.synchronize()?;
        Ok(total)
    };
    // Warm-up (kernels, allocator). A method that fails here, e.g. out of device memory, is
    // reported and left out; a smaller --gp-micro-batch is the fix for gradient penalty.
    let mut methods: Vec<&str> = Vec::new();
    for method in METHODS {
        match step(method, &mut rng) {
            Ok(_) => methods.push(method),
            Err(e) => println!("{method}: left out, it failed: {e}"),
        }
    }
    if methods.first() != Some(&"plain") {
        return Err(advtrain::Error::InvalidArgument {
            name: "model size",
            reason: "the plain step itself failed".into(),
            fix: "use a smaller --batch, --seq or --layers".into(),
        });
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for round in 0..s.rounds {
        for k in 0..methods.len() {
            let m = (round + k) % methods.len();
            let started = Instant::now();
            step(methods[m], &mut rng)?;
            times[m].push(started.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
        v[v.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    println!("{:<18} {:>12} {:>10}", "method", "median ms", "x plain");
    for (m, t) in methods.iter().zip(&medians) {
        println!("{m:<18} {:>12.2} {:>10.2}", 1e3 * t, t / medians[0]);
    }
    let flops = plain_step_flops(&s);
    println!(
        "plain step: {:.1} GFLOP (matrix products: 3 x the forward pass's 2 x {} layers x {} tokens \
         x (12 d^2 + 2 n d)); measured {:.1} GFLOP/s",
        flops / 1e9,
        s.layers,
        s.batch * s.seq,
        flops / medians[0] / 1e9
    );
    Ok(())
}

/// The matrix-product FLOPs of a plain step (forward and backward, the backward twice the
/// forward): per token and layer, the four attention projections and the feed-forward pair
/// (`12 d^2` multiply-adds with a feed-forward of 4d) and the scores and context (`2 n d`).
/// Embedding lookups, layer norms, GELU and softmax are left out: they are linear in `d`.
fn plain_step_flops(s: &Settings) -> f64 {
    let (d, n) = (s.hidden as f64, s.seq as f64);
    let tokens = (s.batch * s.seq) as f64;
    3.0 * 2.0 * s.layers as f64 * tokens * (12.0 * d * d + 2.0 * n * d)
}
