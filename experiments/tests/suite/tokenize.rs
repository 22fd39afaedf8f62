//! Tokenisation: the Chinese WordPiece tokenizer covers THUCNews, keeps Latin capitals, truncates, and
//! batches pad with a mask.

use advtrain_experiments::data::{subsample, thucnews};
use advtrain_experiments::tokenize::{TextTokenizer, pad_batch};
use candle_core::{DType, Device};
use std::path::Path;

fn chinese(max_len: usize) -> TextTokenizer {
    TextTokenizer::wordpiece(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/bert-base-chinese-vocab.txt"
        )),
        max_len,
    )
    .unwrap()
}

/// `n` THUCNews headlines (the bundled file), drawn with `seed`.
fn headlines(n: usize, seed: u64) -> advtrain_experiments::data::TextDataset {
    let file = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/thucnews_10w.tsv.xz"
    ));
    subsample(&thucnews(file).unwrap(), n, seed)
}

#[test]
fn chinese_headlines_get_cls_and_sep_and_one_token_per_character() {
    let t = chinese(64);
    assert_eq!(t.vocab_size(), 21_128);
    let ids = t.encode(&["乌克兰大选".to_string()]).unwrap();
    assert_eq!(ids[0].len(), 5 + 2);
    assert_eq!(ids[0][0], 101); // [CLS]
    assert_eq!(*ids[0].last().unwrap(), 102); // [SEP]
}

#[test]
fn the_vocab_covers_thucnews_and_latin_capitals() {
    let t = chinese(64);
    let data = headlines(2_000, 1);
    let encoded = t.encode(&data.texts).unwrap();
    let unknown = t.unknown_fraction(&encoded);
    assert!(unknown < 0.005, "unknown fraction {unknown}");
    let upper = t.encode(&["NBA 2K".to_string()]).unwrap();
    assert_eq!(t.unknown_fraction(&upper), 0.0);
}

#[test]
fn long_texts_are_truncated_to_max_len() {
    let t = chinese(16);
    let ids = t.encode(&["很".repeat(100)]).unwrap();
    assert_eq!(ids[0].len(), 16);
    assert_eq!(*ids[0].last().unwrap(), 102);
}

#[test]
fn ids_at_a_larger_length_give_the_ids_at_a_smaller_one() {
    // The runner reads the maximum length off the training texts' ids at the model's limit, then
    // keeps those ids where they are short enough and encodes only the longer texts again: the
    // result must be what encoding at the smaller length gives, on texts both shorter and longer.
    let data = headlines(500, 2);
    let (long, short) = (chinese(64), chinese(20));
    let at_limit = long.encode(&data.texts).unwrap();
    let longer = at_limit.iter().filter(|ids| ids.len() > 20).count();
    assert!(
        longer > 0 && longer < data.texts.len(),
        "{longer} of {} texts longer than 20 tokens: the test needs both kinds",
        data.texts.len()
    );
    let direct = short.encode(&data.texts).unwrap();
    assert_eq!(
        short.encode_from_longer(&data.texts, at_limit).unwrap(),
        direct
    );
    // Ids of other texts are refused.
    let e = short
        .encode_from_longer(&data.texts, direct[..3].to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoded") && e.contains("3 sequences"), "{e}");
}

#[test]
fn a_missing_vocab_is_a_clear_error() {
    let e = TextTokenizer::wordpiece(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/none.txt")),
        16,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("data/none.txt") && e.contains("bert-base-chinese-vocab"),
        "{e}"
    );
    assert!(
        TextTokenizer::wordpiece(
            Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../data/bert-base-chinese-vocab.txt"
            )),
            2
        )
        .is_err()
    );
}

#[test]
fn batches_pad_to_the_longest_with_a_mask() {
    let (ids, mask) = pad_batch(&[&[5, 6, 7], &[8]], 0, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ids.to_vec2::<u32>().unwrap(), [[5, 6, 7], [8, 0, 0]]);
    assert_eq!(mask.to_vec2::<f32>().unwrap(), [[1., 1., 1.], [1., 0., 0.]]);
    assert!(pad_batch(&[], 0, DType::F32, &Device::Cpu).is_err());
}

#[test]
fn roberta_style_tokenizers_pad_with_their_own_token() {
    // The RoBERTa family names its specials <s>, <pad>, </s> and <unk>, where BERT's are [PAD] etc.
    let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "unk_token": "<unk>",
        "vocab": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "good": 4, "film": 5}}}"#;
    let dir = std::env::temp_dir().join(format!("advtrain-roberta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let tokenizer = TextTokenizer::from_json(&path, 8).unwrap();
    assert_eq!(tokenizer.pad_id(), 1);
    assert_eq!(tokenizer.encode(&["good film"]).unwrap(), vec![vec![4, 5]]);
    let e = TextTokenizer::from_json(&path, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("max_len") && e.contains("[CLS]"), "{e}");
}
