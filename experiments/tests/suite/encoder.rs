//! The library's BERT-family classifier on a real checkpoint: all-MiniLM-L6-v2, loaded from its
//! Hugging Face directory and tokenised with its tokenizer.json, gives the published sentence
//! embedding. (The model's gradients, round trip and loader errors are tested in the library's
//! `tests/suite/models.rs` on a tiny configuration.)

use advtrain::models::{BertClassifier, Head, Pooling};
use advtrain_experiments::tokenize::{TextTokenizer, pad_batch};
use candle_core::{DType, Device};

/// Needs the model: run `bash scripts/setup.sh`, then
/// `cargo test --release -p advtrain-experiments --test suite -- --ignored encoder::` (CI does).
#[test]
#[ignore = "needs data/models/all-MiniLM-L6-v2 from scripts/setup.sh"]
fn pretrained_minilm_gives_the_published_embedding() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/models/all-MiniLM-L6-v2"
    ));
    let device = Device::Cpu;
    let head = Head {
        classes: 2,
        pooling: Pooling::Mean,
    };
    let (model, loaded) =
        BertClassifier::from_pretrained(dir, head, 0, DType::F32, &device).unwrap();
    // Every encoder tensor: 3 embeddings + their norm (2) + 6 layers x 16; no head in the file.
    assert_eq!(loaded.encoder, 3 + 2 + 6 * 16);
    assert!(!loaded.head);
    let tokenizer = TextTokenizer::from_json(&dir.join("tokenizer.json"), 128).unwrap();
    let ids = tokenizer
        .encode(&["This is an example sentence".to_string()])
        .unwrap();
    let (ids, mask) = pad_batch(
        &[ids[0].as_slice()],
        tokenizer.pad_id(),
        DType::F32,
        &device,
    )
    .unwrap();
    let e = model.sentence_embedding(&ids, &mask).unwrap();
    let first: Vec<f32> = e
        .squeeze(0)
        .unwrap()
        .narrow(0, 0, 5)
        .unwrap()
        .to_vec1()
        .unwrap();
    eprintln!("first five: {first:?}");
    let published = [0.06766f32, 0.06350, 0.04871, 0.07930, 0.03745];
    for (got, want) in first.iter().zip(published) {
        // The published figures have 4 significant digits.
        assert!((got - want).abs() < 1e-4, "{first:?} vs {published:?}");
    }
}
