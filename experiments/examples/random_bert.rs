//! Writes a BERT with random weights in the Hugging Face layout (config.json, model.safetensors,
//! vocab.txt): BERT-base's sizes with a given WordPiece vocabulary, to time `experiment clue` with
//! the real model's shapes where the pretrained weights are not at hand (scripts/clue-cost.sh).
//!
//! `cargo run --release -p advtrain-experiments --example random_bert -- VOCAB.txt OUT_DIR [LAYERS]`

use advtrain::models::{BertClassifier, BertConfig, Head, Pooling};
use candle_core::{DType, Device};
use std::path::PathBuf;

fn main() -> advtrain::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(vocab), Some(out)) = (args.first(), args.get(1)) else {
        return Err(advtrain::Error::InvalidArgument {
            name: "arguments",
            reason: "need a vocabulary file and an output folder".into(),
            fix: "run `random_bert VOCAB.txt OUT_DIR [LAYERS]`".into(),
        });
    };
    let (vocab, out) = (PathBuf::from(vocab), PathBuf::from(out));
    let text = std::fs::read_to_string(&vocab).map_err(|e| {
        advtrain::Error::data(
            vocab.display(),
            None,
            e.to_string(),
            "pass a WordPiece vocab.txt",
        )
    })?;
    let tokens = text.lines().count();
    let mut config = BertConfig::bert_base(tokens);
    if let Some(layers) = args.get(2) {
        config.num_hidden_layers =
            layers
                .parse()
                .map_err(|_| advtrain::Error::InvalidArgument {
                    name: "LAYERS",
                    reason: format!("{layers:?} is not a count"),
                    fix: "pass a whole number of layers".into(),
                })?;
    }
    let head = Head {
        classes: 2,
        pooling: Pooling::Cls,
    };
    let model = BertClassifier::new(config, head, 0, DType::F32, &Device::Cpu)?;
    model.save_pretrained(&out)?;
    std::fs::copy(&vocab, out.join("vocab.txt")).map_err(|e| {
        advtrain::Error::data(out.display(), None, e.to_string(), "pass a writable folder")
    })?;
    println!(
        "wrote {} ({} tokens, {} layers, width {})",
        out.display(),
        tokens,
        model.config().num_hidden_layers,
        model.config().hidden_size
    );
    Ok(())
}
