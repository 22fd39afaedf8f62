//! Every method of advtrain in a user's own training loop, perturbing a text model's embedding output.
//!
//! `cargo run --release --example embedding_methods`
//!
//! A small transformer-style classifier (advtrain::toy::EmbeddingClassifier, f32) is trained on four
//! fixed batches of padded token sequences, once per method, with the same seed. One loop serves every
//! method through `advtrain::Method`: the method is the one value that changes (see `method`), and
//! "fgm + vat" composes FGM with VAT's regulariser. Dropout on the
//! embeddings uses a mask held fixed across each batch's ascent steps. The loop prints the clean loss
//! before and after, and the passes each step cost; it exits non-zero if a method fails to lower the loss.

use advtrain::toy::{EmbeddingClassifier, TokenBatch};
use advtrain::{
    Batch, Fgm, FreeAt, FreeLb, GradientPenalty, HeldDropout, Method, Pgd, Plain, Rng, Smart,
    SmartDivergence, Target, Vat, WithRegulariser, Yopo,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;

const METHODS: [&str; 10] = [
    "plain",
    "fgm",
    "gradient penalty",
    "pgd-3",
    "freeat-3",
    "yopo-3-3",
    "freelb-3",
    "smart",
    "vat",
    "fgm + vat",
];

/// The method for a name: switching method in the loop below is this one value.
fn method(name: &str) -> advtrain::Result<Box<dyn Method>> {
    Ok(match name {
        "plain" => Box::new(Plain),
        "fgm" => Box::new(Fgm::new(0.5)?),
        "gradient penalty" => Box::new(GradientPenalty::new(0.5)?),
        "pgd-3" => Box::new(Pgd::new(0.5, 0.2, 3)?),
        "freeat-3" => Box::new(FreeAt::new(0.05, 3)?),
        "yopo-3-3" => Box::new(Yopo::new(0.05, 0.02, 3, 3)?),
        "freelb-3" => Box::new(
            FreeLb::new(0.1, 3)?
                .with_init_mag(0.05)?
                .with_max_norm(0.5)?,
        ),
        "smart" => Box::new(Smart::new(1.0, SmartDivergence::SymmetricKl)?),
        "vat" => Box::new(Vat::new(0.5)?.with_xi(1e-2)?),
        // Semi-supervised style: FGM's adversarial loss plus VAT's smoothness.
        "fgm + vat" => Box::new(Fgm::new(0.5)?.with(Vat::new(0.5)?.with_xi(1e-2)?)),
        other => {
            return Err(advtrain::Error::InvalidArgument {
                name: "method",
                reason: format!("unknown method {other:?}"),
                fix: format!("use one of {METHODS:?}"),
            });
        }
    })
}

fn mean_clean_loss(model: &EmbeddingClassifier, batches: &[TokenBatch]) -> advtrain::Result<f32> {
    let mut total = 0.0;
    for b in batches {
        let loss = model.loss_from_embeddings(&model.embed(&b.ids)?, &b.mask, &b.labels)?;
        total += loss.to_scalar::<f32>()?;
    }
    Ok(total / batches.len() as f32)
}

fn train(name: &str, device: &Device) -> advtrain::Result<(f32, f32, advtrain::Passes)> {
    let device = device.clone();
    let model = EmbeddingClassifier::new(200, 32, 4, 1, DType::F32, &device)?;
    let mut rng = Rng::new(2);
    let batches: Vec<TokenBatch> = (0..4)
        .map(|_| model.batch(16, 12, 4, &mut rng))
        .collect::<Result<_, _>>()?;
    let mut opt = candle_nn::AdamW::new_lr(model.vars(), 3e-3)?;
    let dropout = HeldDropout::new(0.1)?;
    let mut method = method(name)?;
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
            // YOPO's split: the first block, then the rest of the model and the loss.
            let first = |e: &Tensor| model.first_block(&dropout.forward(e, true)?, &b.mask);
            let rest = |h: &Tensor| task(&model.head_logits(h, &b.mask)?);
            // FreeAT replays the batch, with an optimiser update after each replay.
            for _ in 0..method.replays() {
                let embeddings = model.embed(&b.ids)?;
                let target = Target::embedding_output(&embeddings, Some(&b.mask))?;
                let batch =
                    Batch::with_outputs(&target, &logits, &task).with_first_layer(&first, &rest);
                let step = method.step(&batch, &mut rng)?;
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
