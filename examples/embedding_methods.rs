//! Every method of advtrain in a user's own training loop, perturbing a text model's embedding output.
//!
//! `cargo run --release --example embedding_methods`
//!
//! A small transformer-style classifier (advtrain::toy::EmbeddingClassifier, f32) is trained on four
//! fixed batches of padded token sequences, once per method, with the same seed. Dropout on the
//! embeddings uses a mask held fixed across each batch's ascent steps. The loop prints the clean loss
//! before and after, and the passes each step cost; it exits non-zero if a method fails to lower the loss.

use advtrain::toy::{EmbeddingClassifier, TokenBatch};
use advtrain::{
    Fgm, FreeAt, FreeLb, GradientPenalty, HeldDropout, Pgd, Rng, Smart, SmartDivergence, Step,
    Target, Vat, Yopo,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;

const METHODS: [&str; 9] = [
    "plain",
    "fgm",
    "gradient penalty",
    "pgd-3",
    "freeat-3",
    "yopo-3-3",
    "freelb-3",
    "smart",
    "vat",
];

fn mean_clean_loss(model: &EmbeddingClassifier, batches: &[TokenBatch]) -> advtrain::Result<f32> {
    let mut total = 0.0;
    for b in batches {
        let loss = model.loss_from_embeddings(&model.embed(&b.ids)?, &b.mask, &b.labels)?;
        total += loss.to_scalar::<f32>()?;
    }
    Ok(total / batches.len() as f32)
}

fn train(method: &str, device: &Device) -> advtrain::Result<(f32, f32, advtrain::Passes)> {
    let device = device.clone();
    let model = EmbeddingClassifier::new(200, 32, 4, 1, DType::F32, &device)?;
    let mut rng = Rng::new(2);
    let batches: Vec<TokenBatch> = (0..4)
        .map(|_| model.batch(16, 12, 4, &mut rng))
        .collect::<Result<_, _>>()?;
    let mut opt = candle_nn::AdamW::new_lr(model.vars(), 3e-3)?;
    let dropout = HeldDropout::new(0.1)?;
    let mut free_at = FreeAt::new(0.05, 3)?;
    let mut freelb = FreeLb::new(0.1, 3)?
        .with_init_mag(0.05)?
        .with_max_norm(0.5)?;
    let before = mean_clean_loss(&model, &batches)?;
    let mut passes = advtrain::Passes::default();
    for _epoch in 0..15 {
        for b in &batches {
            // One dropout mask per batch, the same for every ascent step of the method.
            dropout.resample(
                (b.ids.dim(0)?, b.ids.dim(1)?, 32),
                DType::F32,
                &device,
                &mut rng,
            )?;
            let logits = |e: &Tensor| -> candle_core::Result<Tensor> {
                model.logits_from_embeddings(&dropout.forward(e, true)?, &b.mask)
            };
            let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &b.labels);
            let loss = |e: &Tensor| task(&logits(e)?);
            let embeddings = model.embed(&b.ids)?;
            let target = Target::embedding_output(&embeddings, Some(&b.mask))?;
            let steps: Vec<Step> = match method {
                "plain" => {
                    opt.step(&target.loss(&loss)?.backward()?)?;
                    passes = advtrain::Passes {
                        forward: 1,
                        backward: 1,
                        double_backward: 0,
                    };
                    continue;
                }
                "fgm" => vec![Fgm::new(0.5)?.step(&target, &loss)?],
                "gradient penalty" => vec![GradientPenalty::new(0.5)?.step(&target, &loss)?],
                "pgd-3" => vec![Pgd::new(0.5, 0.2, 3)?.step(&target, &loss, &mut rng)?],
                "freeat-3" => {
                    // m replays of the batch, an optimiser update after each.
                    let mut replays = Vec::new();
                    for _ in 0..free_at.replays() {
                        let step = free_at.step(&target, &loss)?;
                        opt.step(&step.grads)?;
                        replays.push(step);
                    }
                    passes = replays[0].passes;
                    continue;
                }
                "yopo-3-3" => {
                    let first = |e: &Tensor| model.first_block(&dropout.forward(e, true)?, &b.mask);
                    let rest = |h: &Tensor| task(&model.head_logits(h, &b.mask)?);
                    vec![Yopo::new(0.05, 0.02, 3, 3)?.step(&target, &first, &rest, &mut rng)?]
                }
                "freelb-3" => vec![freelb.step(&target, &loss, &mut rng)?],
                "smart" => vec![
                    Smart::new(1.0, SmartDivergence::SymmetricKl)?
                        .step(&target, &logits, &task, &mut rng)?,
                ],
                "vat" => vec![
                    Vat::new(0.5)?
                        .with_xi(1e-2)?
                        .step(&target, &logits, &task, &mut rng)?,
                ],
                other => unreachable!("{other}"),
            };
            for step in steps {
                passes = step.passes;
                opt.step(&step.grads)?;
            }
        }
    }
    Ok((before, mean_clean_loss(&model, &batches)?, passes))
}

fn main() {
    // SAFETY: set before any other thread exists and before any backward pass (gradient penalty needs
    // second order; cargo sets it too, through .cargo/config.toml).
    unsafe { advtrain::second_order::enable_for_new_threads() };
    let (device, description) = advtrain::device::select();
    println!("device: {description}");
    println!(
        "{:<18} {:>12} {:>12} {:>8} {:>9}",
        "method", "loss before", "loss after", "forward", "backward"
    );
    let mut failed = false;
    for method in METHODS {
        match train(method, &device) {
            Ok((before, after, passes)) => {
                let ok = after < before;
                failed |= !ok;
                println!(
                    "{method:<18} {before:>12.4} {after:>12.4} {:>8} {:>9} {}",
                    passes.forward,
                    passes.backward,
                    if ok { "" } else { "  <- loss did not fall" }
                );
            }
            Err(e) => {
                failed = true;
                println!("{method:<18} error: {e}");
            }
        }
    }
    std::process::exit(if failed { 1 } else { 0 });
}
