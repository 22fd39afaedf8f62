//! The seeds' experiment end to end, and the user's own text files: a tiny random-weight BERT
//! checkpoint written in the Hugging Face layout (config.json, model.safetensors, vocab.txt) and
//! tiny CLUE-format files train baseline, FGM and gradient penalty through `advtrain experiment
//! clue`; TSV train/dev files, one JSONL file split by seed, and every bad input (unknown dev
//! label, tokenizer larger than the model's vocabulary, missing model file or flag, too long a
//! maximum length) is an error naming the file, line or flag.

use advtrain::models::{BertClassifier, BertConfig, Head, Pooling};
use advtrain_experiments::cli::{parse, train_all};
use advtrain_experiments::run::{Experiment, Method, Prepared, prepare};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// Characters of each class, and characters every class uses.
const CLASSES: [(&str, &str); 3] = [
    ("100", "球赛队冠军"),
    ("101", "股市钱银行"),
    ("102", "歌影星剧场"),
];
const SHARED: &str = "的了是在有";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("advtrain-clue-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn vocabulary() -> Vec<String> {
    let mut tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    for (_, chars) in CLASSES {
        tokens.extend(chars.chars().map(String::from));
    }
    tokens.extend(SHARED.chars().map(String::from));
    tokens
}

/// A random-weight BERT with the tiny vocabulary, written as a Hugging Face directory.
fn tiny_checkpoint(dir: &Path, vocab: &[String]) {
    let config = BertConfig {
        vocab_size: vocab.len(),
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 24,
        ..BertConfig::bert_base(vocab.len())
    };
    let head = Head {
        classes: 3,
        pooling: Pooling::Cls,
    };
    let model = BertClassifier::new(config, head, 9, DType::F32, &Device::Cpu).unwrap();
    model.save_pretrained(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
}

/// `n` CLUE JSONL lines: each sentence draws from its class's characters and the shared ones.
fn clue_lines(n: usize, seed: u64) -> String {
    let mut rng = advtrain::Rng::new(seed);
    let mut out = String::new();
    for i in 0..n {
        let (label, own) = CLASSES[i % 3];
        let own: Vec<char> = own.chars().chain(SHARED.chars()).collect();
        let len = 3 + (rng.uniform_f64(0.0, 6.0) as usize);
        let sentence: String = (0..len)
            .map(|_| own[rng.uniform_f64(0.0, own.len() as f64) as usize % own.len()])
            .collect();
        out.push_str(&format!(
            "{{\"label\": \"{label}\", \"label_desc\": \"c{label}\", \"sentence\": \"{sentence}\"}}\n"
        ));
    }
    out
}

fn args(line: String) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn the_seeds_experiment_runs_end_to_end_on_a_tiny_checkpoint() {
    let dir = scratch("end-to-end");
    let model = dir.join("bert");
    tiny_checkpoint(&model, &vocabulary());
    for (name, n, seed) in [("train", 60, 1), ("dev", 15, 2), ("test", 15, 3)] {
        std::fs::write(dir.join(format!("{name}.json")), clue_lines(n, seed)).unwrap();
    }
    let command = format!(
        "clue --model {m} --train {d}/train.json --dev {d}/dev.json --test {d}/test.json \
         --seeds 1 --epochs 2 --out {d}/out",
        m = model.display(),
        d = dir.display()
    );
    let options = parse(&args(command)).unwrap();
    assert_eq!(options.experiment, Experiment::Clue);
    assert_eq!(
        options.methods,
        [Method::Baseline, Method::Fgm, Method::GradientPenalty]
    );
    // The seeds' settings: the embedding matrix, FGM at 0.5 on the adversarial loss alone,
    // gradient penalty 0.5 * 1 * ||g||^2.
    let hyper = Experiment::Clue.hyper();
    assert!(hyper.matrix_target);
    assert_eq!(
        (hyper.eps, hyper.eps * hyper.gp_scale, hyper.lr),
        (0.5, 1.0, 2e-5)
    );
    let Prepared::Text {
        train, dev, head, ..
    } = prepare(&options).unwrap()
    else {
        panic!("clue prepares text")
    };
    assert_eq!((train.1.len(), dev.1.len()), (60, 15));
    assert_eq!(head.classes, 3);
    assert_eq!(head.pooling, Pooling::Cls);
    // The longest sentence has 8 characters: 10 tokens with [CLS] and [SEP], none unknown.
    assert!(
        train
            .0
            .iter()
            .all(|ids| ids.len() <= 10 && !ids.contains(&1))
    );
    let rows = train_all(&options).unwrap();
    assert_eq!(rows.len(), 3 * 2);
    for row in &rows {
        assert!(
            row.train_loss.is_finite() && row.train_loss > 0.0,
            "{row:?}"
        );
        assert!((0.0..=1.0).contains(&row.test_accuracy));
    }
    let passes = |method: &str| {
        let row = rows.iter().find(|r| r.method == method).unwrap();
        (row.passes_forward, row.passes_backward)
    };
    assert_eq!(passes("baseline"), (1, 1));
    // FGM: the gradient pass, then the adversarial pass alone (no second clean pass).
    assert_eq!(passes("fgm"), (2, 2));
    assert!(dir.join("out/summary.md").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_users_files_train_in_every_format() {
    let dir = scratch("formats");
    let model = dir.join("bert");
    tiny_checkpoint(&model, &vocabulary());
    // TSV train and dev files, no test file.
    let tsv = |n, seed| {
        clue_lines(n, seed)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{}\t{}\n",
                    v["label"].as_str().unwrap(),
                    v["sentence"].as_str().unwrap()
                )
            })
            .collect::<String>()
    };
    std::fs::write(dir.join("train.tsv"), tsv(30, 1)).unwrap();
    std::fs::write(dir.join("dev.tsv"), tsv(9, 2)).unwrap();
    let command = format!(
        "thucnews --model {m} --train {d}/train.tsv --dev {d}/dev.tsv --max-len 12 --methods fgm \
         --seeds 1 --epochs 1 --out {d}/out-tsv",
        m = model.display(),
        d = dir.display()
    );
    let options = parse(&args(command)).unwrap();
    let Prepared::Text { dev, test, .. } = prepare(&options).unwrap() else {
        panic!("text")
    };
    // Without --test, the test set is the dev set.
    assert_eq!(dev, test);
    assert_eq!(train_all(&options).unwrap().len(), 1);
    // One JSONL file split by seed, the length from the percentile.
    std::fs::write(dir.join("all.jsonl"), clue_lines(50, 4)).unwrap();
    let command = format!(
        "clue --model {m} --texts {d}/all.jsonl --methods baseline --seeds 1 --epochs 1 --out {d}/out-one",
        m = model.display(),
        d = dir.display()
    );
    let options = parse(&args(command)).unwrap();
    let Prepared::Text { train, dev, .. } = prepare(&options).unwrap() else {
        panic!("text")
    };
    assert_eq!((train.1.len(), dev.1.len()), (40, 5));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_text_inputs_are_errors_naming_the_file_line_or_flag() {
    let dir = scratch("errors");
    let model = dir.join("bert");
    let vocab = vocabulary();
    tiny_checkpoint(&model, &vocab);
    std::fs::write(dir.join("train.json"), clue_lines(12, 1)).unwrap();
    let prepare_error = |line: String| -> String {
        let options = parse(&args(line)).unwrap();
        prepare(&options)
            .err()
            .expect("preparing fails")
            .to_string()
    };
    let base = format!(
        "clue --model {m} --train {d}/train.json --dev {d}/dev.json",
        m = model.display(),
        d = dir.display()
    );
    // A dev label the training file does not have, at its line.
    let mut dev = clue_lines(3, 2);
    dev.push_str("{\"label\": \"999\", \"sentence\": \"球赛\"}\n");
    std::fs::write(dir.join("dev.json"), &dev).unwrap();
    let e = prepare_error(base.clone());
    assert!(
        e.contains("dev.json:4") && e.contains("unknown label \"999\""),
        "{e}"
    );
    std::fs::write(dir.join("dev.json"), clue_lines(3, 2)).unwrap();
    // An empty text.
    std::fs::write(
        dir.join("bad.json"),
        "{\"label\": \"100\", \"sentence\": \" \"}\n",
    )
    .unwrap();
    let e = prepare_error(format!("{base} --test {}/bad.json", dir.display()));
    assert!(e.contains("bad.json:1") && e.contains("empty text"), "{e}");
    // A ragged TSV row.
    std::fs::write(dir.join("ragged.tsv"), "100\t球赛\n101\n").unwrap();
    let e = prepare_error(format!("{base} --test {}/ragged.tsv", dir.display()));
    assert!(e.contains("ragged.tsv:2"), "{e}");
    // --max-len beyond the model's positions.
    let e = prepare_error(format!("{base} --max-len 100"));
    assert!(e.contains("--max-len") && e.contains("24 positions"), "{e}");
    // A tokenizer with more tokens than the model's embedding has rows.
    let mut bigger = vocab.clone();
    bigger.extend(["甲", "乙"].map(String::from));
    std::fs::write(dir.join("big-vocab.txt"), bigger.join("\n")).unwrap();
    let e = prepare_error(format!(
        "{base} --tokenizer {}/big-vocab.txt",
        dir.display()
    ));
    assert!(
        e.contains("big-vocab.txt") && e.contains("vocab_size"),
        "{e}"
    );
    // A model directory without its weights.
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let e = prepare_error(base.clone());
    assert!(
        e.contains("model.safetensors") && e.contains("missing"),
        "{e}"
    );
    // clue without a model, or without texts.
    let e = prepare_error(format!(
        "clue --train {d}/train.json --dev {d}/dev.json",
        d = dir.display()
    ));
    assert!(e.contains("--model") && e.contains("fix: "), "{e}");
    tiny_checkpoint(&model, &vocab);
    let e = prepare_error(format!("clue --model {}", model.display()));
    assert!(
        e.contains("--train") && e.contains("no bundled texts"),
        "{e}"
    );
    // Flags the command line refuses: --train without --dev, text flags on mnist.
    for line in [
        format!("clue --train {}/train.json", dir.display()),
        format!("mnist --model {}", model.display()),
        "mnist --max-len 10".to_string(),
    ] {
        let e = parse(&args(line.clone())).unwrap_err().to_string();
        assert!(e.contains("fix: "), "{line}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
