//! The runner: an interrupted run resumes from its checkpoint to the same result, the results table
//! round-trips through CSV, the summary's arithmetic, and the command line's errors.

use advtrain_experiments::cli::parse;
use advtrain_experiments::report::markdown;
use advtrain_experiments::report::{mean_std, summarise};
use advtrain_experiments::rows::{EpochRow, read_rows};
use advtrain_experiments::run::{Experiment, Method, Options, Run, prepare, run_one};

fn fgm(seed: u64) -> Run {
    Run {
        method: Method::Fgm,
        eps: Experiment::Mnist.hyper().eps,
        seed,
    }
}

fn options(out: &str, epochs: usize) -> Options {
    Options {
        experiment: Experiment::Mnist,
        methods: vec![Method::Fgm],
        seeds: 1,
        epochs,
        quick: true,
        data_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../data").into(),
        out_dir: std::env::temp_dir().join(format!("advtrain-run-{}-{out}", std::process::id())),
        verbose: false,
        eps: Vec::new(),
        subset: None,
        images: None,
        texts: None,
        model: None,
        tokenizer: None,
        max_len: None,
        fgm_objective: None,
        gp_scale: None,
        seeds_form: false,
        selection: None,
    }
}

#[test]
fn a_resumed_run_ends_where_the_uninterrupted_one_does() {
    let bar = indicatif::ProgressBar::hidden();
    let straight = options("straight", 2);
    let prepared = prepare(&straight).unwrap();
    let whole = run_one(&straight, &prepared, fgm(1), &bar).unwrap();
    // Interrupted after epoch 1, then started again asking for 2 epochs.
    let interrupted = options("interrupted", 1);
    run_one(&interrupted, &prepared, fgm(1), &bar).unwrap();
    let resumed_options = Options {
        epochs: 2,
        ..interrupted.clone()
    };
    let resumed = run_one(&resumed_options, &prepared, fgm(1), &bar).unwrap();
    assert_eq!(whole.len(), 2);
    assert_eq!(resumed.len(), 2);
    for (a, b) in whole.iter().zip(&resumed) {
        assert_eq!(a.epoch, b.epoch);
        assert_eq!(a.train_loss, b.train_loss, "epoch {}", a.epoch);
        assert_eq!(a.test_accuracy, b.test_accuracy);
    }
    // Robust accuracy is measured at a run's last epoch.
    assert_eq!(whole[1].pgd_accuracy, resumed[1].pgd_accuracy);
    assert!(whole[0].pgd_accuracy.is_nan());
    // A different seed gives a different run.
    let other = run_one(&options("other", 1), &prepared, fgm(2), &bar).unwrap();
    assert_ne!(other[0].train_loss, whole[0].train_loss);
    // The rows file beside the checkpoints reads back as written.
    let dir = advtrain_experiments::run::run_dir(&straight, &fgm(1));
    let read = read_rows(&dir.join("rows.csv")).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].test_accuracy, whole[1].test_accuracy);
    assert_eq!(read[0].train_loss, whole[0].train_loss);
}

fn row(method: &str, seed: u64, epoch: usize, acc: f64) -> EpochRow {
    EpochRow {
        experiment: "x".into(),
        method: method.into(),
        eps: 0.05,
        seed,
        epoch,
        train_loss: 0.0,
        dev_accuracy: acc,
        test_accuracy: acc,
        fgsm_accuracy: f64::NAN,
        pgd_accuracy: f64::NAN,
        pgd_l2_accuracy: f64::NAN,
        passes_forward: 1,
        passes_backward: 1,
        seconds: 1.0,
        predicted_classes: 3.0,
        classes: 3.0,
    }
}

#[test]
fn a_collapsed_run_is_flagged_in_the_summary_and_an_old_table_still_reads() {
    let collapsed = EpochRow {
        predicted_classes: 1.0,
        ..row("gradient-penalty", 2, 1, 0.5)
    };
    assert!(collapsed.collapsed() && !row("fgm", 1, 1, 0.6).collapsed());
    // A run that still predicts two classes but whose training loss stayed at ln C (ln 10 = 2.303)
    // learned nothing: collapsed too. One that got below 95% of ln C did not.
    let at_loss = |loss: f64| EpochRow {
        train_loss: loss,
        classes: 10.0,
        predicted_classes: 2.0,
        ..row("fgm", 1, 1, 0.2)
    };
    assert!(at_loss(2.29).collapsed() && at_loss(2.29).at_chance());
    assert!(!at_loss(2.0).collapsed());
    let s = summarise(&[
        row("baseline", 1, 1, 0.6),
        row("gradient-penalty", 1, 1, 0.7),
        collapsed,
    ]);
    assert_eq!((s[0].collapsed, s[1].collapsed), (0, 1));
    let table = markdown(&s, false);
    assert!(
        table.contains("| gradient-penalty (collapsed: 1 of 2) | 2 |"),
        "{table}"
    );
    // A table written before the column existed reads, with the count unknown (NaN).
    let path = std::env::temp_dir().join(format!("advtrain-old-rows-{}.csv", std::process::id()));
    std::fs::write(
        &path,
        "experiment,method,eps,seed,epoch,train_loss,dev_accuracy,test_accuracy,fgsm_accuracy,\
         pgd_accuracy,passes_forward,passes_backward,seconds\nx,fgm,0.1,1,1,0.5,0.6,0.7,NaN,NaN,2,2,1.5\n",
    )
    .unwrap();
    let rows = read_rows(&path);
    std::fs::remove_file(&path).unwrap();
    let rows = rows.unwrap();
    assert!(rows[0].predicted_classes.is_nan() && rows[0].classes.is_nan());
    assert!(!rows[0].collapsed());
    assert_eq!(rows[0].test_accuracy, 0.7);
}

/// Each run is attacked in its own training ball: where the rows trained at different radii, each
/// L2 cell names its radius; where they share one, the table stays as it was.
#[test]
fn l2_cells_name_their_radius_when_the_rows_differ() {
    let attacked = |method: &str, eps: f64, seed: u64, l2: f64| EpochRow {
        eps,
        fgsm_accuracy: 0.5,
        pgd_accuracy: 0.4,
        pgd_l2_accuracy: l2,
        ..row(method, seed, 1, 0.9)
    };
    let rows = [
        attacked("baseline", 1.0, 1, 0.6),
        attacked("fgm", 2.0, 1, 0.7),
        attacked("gradient-penalty", 4.0, 1, 0.1),
    ];
    let table = markdown(&summarise(&rows), true);
    for cell in ["60.00 (radius 1)", "70.00 (radius 2)", "10.00 (radius 4)"] {
        assert!(table.contains(cell), "{cell} missing from\n{table}");
    }
    let same = [
        attacked("baseline", 1.0, 1, 0.6),
        attacked("fgm", 1.0, 1, 0.7),
    ];
    let table = markdown(&summarise(&same), true);
    assert!(!table.contains("radius"), "{table}");
}

#[test]
fn the_summary_compares_final_epochs_with_the_baseline() {
    let rows = vec![
        row("baseline", 1, 1, 0.1),
        row("baseline", 1, 2, 0.5),
        row("baseline", 2, 2, 0.7),
        row("fgm", 1, 2, 0.8),
        row("fgm", 2, 2, 0.6),
    ];
    let s = summarise(&rows);
    assert_eq!(s[0].method, "baseline");
    assert!((s[0].test.0 - 0.6).abs() < 1e-12);
    let (d, se) = s[1].vs_baseline.unwrap();
    assert!((d - 0.1).abs() < 1e-12);
    let sd = mean_std(&[0.5, 0.7]).1;
    assert!((se - (sd * sd / 2.0 + sd * sd / 2.0).sqrt()).abs() < 1e-12);
    let table = markdown(&s, false);
    assert!(
        table.contains("| fgm | 2 | 70.00 ± 14.14 | +10.00 ± 14.14 |"),
        "{table}"
    );
}

#[test]
fn differences_are_paired_by_seed_with_a_t_test() {
    // Seeds 1 and 2: fgm - baseline = 0.8 - 0.5 and 0.6 - 0.7, i.e. +0.3 and -0.1. With one degree
    // of freedom t is Cauchy: p = 1 - 2 atan(t) / pi.
    let rows = vec![
        row("baseline", 1, 2, 0.5),
        row("baseline", 2, 2, 0.7),
        row("fgm", 1, 2, 0.8),
        row("fgm", 2, 2, 0.6),
    ];
    let s = summarise(&rows);
    assert!(s[0].paired.is_none());
    let d = s[1].paired.unwrap();
    assert_eq!(d.seeds, 2);
    assert!((d.mean - 0.1).abs() < 1e-12);
    assert!((d.std - 0.08f64.sqrt()).abs() < 1e-12);
    assert!((d.t - 0.5).abs() < 1e-12);
    let p = 1.0 - 2.0 * 0.5f64.atan() / std::f64::consts::PI;
    assert!((d.p - p).abs() < 1e-9, "{} vs {p}", d.p);
    let table = markdown(&s, false);
    assert!(
        table.contains("+10.00 ± 28.28 (t = 0.50, p = 0.705)"),
        "{table}"
    );
    assert_eq!(advtrain_experiments::report::p_value(0.0004), "p < 0.001");
    assert_eq!(advtrain_experiments::report::p_value(0.0005), "p = 0.001");
    // Every seed gaining the same: no spread, no test; one seed: nothing to pair.
    let same = advtrain_experiments::report::paired_t_test(&[0.02, 0.02]).unwrap();
    assert!(same.t.is_nan() && same.p.is_nan() && (same.mean - 0.02).abs() < 1e-15);
    assert!(advtrain_experiments::report::paired_t_test(&[0.1]).is_none());
}

#[test]
fn one_seed_shows_no_spread() {
    let s = summarise(&[row("baseline", 1, 1, 0.5), row("fgm", 1, 1, 0.625)]);
    let table = markdown(&s, false);
    assert!(table.contains("| fgm | 1 | 62.50 | +12.50 |"), "{table}");
    assert!(!table.contains('±'), "{table}");
}

#[test]
fn a_sweep_is_summarised_per_radius() {
    let at = |method: &str, eps: f64, seed: u64, acc: f64| EpochRow {
        eps,
        ..row(method, seed, 1, acc)
    };
    let rows = vec![
        at("baseline", 0.05, 1, 0.5),
        at("fgm", 0.01, 1, 0.6),
        at("fgm", 0.01, 2, 0.8),
        at("fgm", 0.1, 1, 0.4),
        at("vat", 0.05, 1, 0.3),
    ];
    let s = summarise(&rows);
    let labels: Vec<&str> = s.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["baseline", "fgm eps=0.01", "fgm eps=0.1", "vat"]);
    assert_eq!(s[1].seeds, 2);
    assert!((s[1].test.0 - 0.7).abs() < 1e-12);
    assert_eq!(s[2].eps, Some(0.1));
    assert_eq!(s[0].eps, None);
    // The runner plans each radius for the methods that have one, and one run for the others.
    let o = parse(&[
        "mnist".into(),
        "--eps".into(),
        "0.5,2".into(),
        "--methods".into(),
        "baseline,fgm".into(),
        "--seeds".into(),
        "2".into(),
    ])
    .unwrap();
    let runs = o.runs();
    assert_eq!(runs.len(), 2 + 2 * 2);
    assert_eq!(
        runs.iter()
            .filter(|r| r.method == Method::Fgm && r.eps == 2.0)
            .count(),
        2
    );
}

#[test]
fn a_results_file_with_a_bad_cell_names_its_line() {
    let path = std::env::temp_dir().join(format!("advtrain-rows-{}.csv", std::process::id()));
    advtrain_experiments::rows::write_rows(&path, &[row("fgm", 1, 1, 0.5), row("fgm", 1, 2, 0.6)])
        .unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("0.6", "zero point six");
    std::fs::write(&path, text).unwrap();
    let e = read_rows(&path).unwrap_err().to_string();
    assert!(
        e.contains(":3:") && e.contains("not a number") && e.contains("fix: "),
        "{e}"
    );
}

#[test]
fn the_command_line_rejects_what_it_does_not_know() {
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let o = parse(&args("mnist --quick --methods fgm,vat --seeds 2")).unwrap();
    assert_eq!(o.methods, [Method::Fgm, Method::Vat]);
    assert_eq!((o.seeds, o.epochs, o.quick), (2, 2, true));
    assert!(o.out_dir.ends_with("mnist-quick"));
    let full = parse(&args("thucnews")).unwrap();
    assert!(full.out_dir.ends_with("data/results/thucnews"));
    // Matched weights: FGM's objective and gradient penalty's scale reach the methods' settings.
    let matched = parse(&args("mnist --fgm-objective adversarial --gp-scale 0.5")).unwrap();
    assert_eq!(
        matched.fgm_objective,
        Some(advtrain::Objective::AdversarialOnly)
    );
    assert_eq!(matched.gp_scale, Some(0.5));
    // Fine-tuning MiniLM: baseline, FGM and gradient penalty unless asked, one epoch.
    let rt = parse(&args("rotten-tomatoes")).unwrap();
    assert_eq!(
        rt.methods,
        [Method::Baseline, Method::Fgm, Method::GradientPenalty]
    );
    assert_eq!((rt.epochs, rt.seeds), (1, 3));
    // Without the downloaded model, preparing says to run the setup script.
    let missing = Options {
        data_dir: "no-such-data".into(),
        ..rt
    };
    let e = prepare(&missing).err().unwrap().to_string();
    assert!(e.contains("scripts/setup.sh"), "{e}");
    for bad in [
        "",
        "imagenet",
        "mnist --methods fgsm",
        "mnist --seeds x",
        "mnist --epochs",
        "mnist --fast",
        "mnist --eps 0",
        "mnist --eps 0.1,x",
        "mnist --fgm-objective sideways",
        "mnist --gp-scale 0",
    ] {
        let e = parse(&args(bad)).unwrap_err().to_string();
        assert!(e.contains("fix: "), "{bad}: {e}");
    }
}

#[test]
fn checkpoints_of_another_configuration_are_not_resumed() {
    let bar = indicatif::ProgressBar::hidden();
    let quick = options("config", 1);
    let prepared = prepare(&quick).unwrap();
    let first = run_one(&quick, &prepared, fgm(1), &bar).unwrap();
    // Same folder, other data (not quick): the old checkpoint must not be taken.
    let other = Options {
        quick: false,
        ..quick.clone()
    };
    let prepared_full = prepare(&other).unwrap();
    let second = run_one(&other, &prepared_full, fgm(1), &bar).unwrap();
    assert_ne!(first[0].train_loss, second[0].train_loss);
}

#[test]
fn a_method_without_a_radius_keeps_its_checkpoint_when_eps_changes() {
    let bar = indicatif::ProgressBar::hidden();
    let options = Options {
        methods: vec![Method::Baseline],
        ..options("radius", 1)
    };
    let prepared = prepare(&options).unwrap();
    let baseline = |eps| Run {
        method: Method::Baseline,
        eps,
        seed: 1,
    };
    let first = run_one(&options, &prepared, baseline(0.1), &bar).unwrap();
    let checkpoint =
        advtrain_experiments::run::run_dir(&options, &baseline(0.1)).join("epoch-1.safetensors");
    let written = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    let again = run_one(&options, &prepared, baseline(0.2), &bar).unwrap();
    assert_eq!(
        std::fs::metadata(&checkpoint).unwrap().modified().unwrap(),
        written,
        "the baseline was trained again for another eps"
    );
    assert_eq!(first[0].train_loss, again[0].train_loss);
    // A method with a radius does train again (in its own folder) for another eps.
    let fgm_at = |eps| Run {
        method: Method::Fgm,
        eps,
        seed: 1,
    };
    let a = run_one(&options, &prepared, fgm_at(0.1), &bar).unwrap();
    let b = run_one(&options, &prepared, fgm_at(1.0), &bar).unwrap();
    assert_ne!(a[0].train_loss, b[0].train_loss);
}

/// The acceptance test as a user meets it: the binary is killed in the middle of an epoch, started
/// again with the same command, and its final table equals an uninterrupted run's (wall time aside).
#[test]
fn a_run_killed_mid_epoch_and_restarted_ends_as_an_uninterrupted_one() {
    use std::process::Command;
    let root = std::env::temp_dir().join(format!("advtrain-kill-{}", std::process::id()));
    let command = |out: &std::path::Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_advtrain"));
        c.args([
            "experiment",
            "mnist",
            "--quick",
            "--seeds",
            "1",
            "--methods",
            "fgm",
        ])
        .args(["--epochs", "3"])
        // All 5,000 digits: a quick subset's epoch took 0.15 s, too short to kill reliably within.
        .args(["--subset", "5000"])
        .args(["--data", concat!(env!("CARGO_MANIFEST_DIR"), "/../data")])
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null());
        c
    };
    let straight = root.join("straight");
    assert!(command(&straight).status().unwrap().success());
    // Only the newest checkpoint stays: it alone is needed to resume.
    let mut kept: Vec<String> = std::fs::read_dir(straight.join("checkpoints/fgm-eps1-seed1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".safetensors"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["epoch-3.safetensors"]);
    // A folder written before the examples' hash joined the fingerprint resumes (trains nothing:
    // its rows, their seconds included, stay as they were) and takes the full fingerprint.
    let run_dir = straight.join("checkpoints/fgm-eps1-seed1");
    let config = std::fs::read_to_string(run_dir.join("config.txt")).unwrap();
    let at = config
        .find(" examples=")
        .expect("the fingerprint holds the examples' hash");
    let legacy = format!(
        "{}{}",
        &config[..at],
        &config[at + " examples=".len() + 16..]
    );
    std::fs::write(run_dir.join("config.txt"), legacy).unwrap();
    let before = std::fs::read_to_string(run_dir.join("rows.csv")).unwrap();
    assert!(command(&straight).status().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(run_dir.join("rows.csv")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("config.txt")).unwrap(),
        config
    );

    let killed = root.join("killed");
    let checkpoints = killed.join("checkpoints/fgm-eps1-seed1");
    let mut child = command(&killed).spawn().unwrap();
    let started = std::time::Instant::now();
    while !checkpoints.join("epoch-1.safetensors").exists() {
        assert!(
            started.elapsed().as_secs() < 600,
            "no checkpoint after 10 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before epoch 1's checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A third of an epoch of the uninterrupted run (its rows record each epoch's seconds).
    let rows = read_rows(&straight.join("checkpoints/fgm-eps1-seed1/rows.csv")).unwrap();
    let wait = std::time::Duration::from_secs_f64(rows[1].seconds / 3.0);
    std::thread::sleep(wait);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !checkpoints.join("epoch-2.safetensors").exists(),
        "epoch 2 ended within {wait:?}, a third of an epoch: the kill did not land mid-epoch"
    );
    assert!(!killed.join("results.csv").exists());
    assert!(command(&killed).status().unwrap().success());

    let a = read_rows(&straight.join("results.csv")).unwrap();
    let b = read_rows(&killed.join("results.csv")).unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        let y = EpochRow {
            seconds: x.seconds,
            ..y.clone()
        };
        assert_eq!(format!("{x:?}"), format!("{y:?}"), "epoch {}", x.epoch);
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn the_mnist_experiment_runs_on_idx_files_and_refuses_other_shapes() {
    use advtrain_experiments::data::mnist_csv;
    let csv = mnist_csv(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/mnist_5k.csv.gz"
    )))
    .unwrap();
    // Every 16th digit: the shipped file is sorted by label, and this takes all ten classes.
    let n = 300;
    let rows: Vec<usize> = (0..n).map(|i| i * 16).collect();
    let pixels: Vec<u8> = rows
        .iter()
        .flat_map(|&r| csv.pixels[r * 784..(r + 1) * 784].iter())
        .map(|p| (p * 255.0).round() as u8)
        .collect();
    let labels: Vec<u8> = rows.iter().map(|&r| csv.labels[r] as u8).collect();
    assert_eq!(*labels.iter().max().unwrap(), 9);
    let images = crate::data::idx_file("run-images-idx3-ubyte.gz", &[n as u32, 28, 28], &pixels);
    let label_file = crate::data::idx_file("run-labels-idx1-ubyte.gz", &[n as u32], &labels);
    let out = std::env::temp_dir().join(format!("advtrain-idx-run-{}", std::process::id()));
    let args = |extra: &str| {
        format!(
            "mnist --quick --seeds 1 --methods baseline --epochs 2 --subset {n} --out {} {extra}",
            out.display()
        )
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");
    let options = parse(&args(&format!(
        "--data {data} --images {} --labels {}",
        images.display(),
        label_file.display()
    )))
    .unwrap();
    let prepared = prepare(&options).unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let rows = run_one(&options, &prepared, options.runs()[0], &bar).unwrap();
    assert_eq!(rows.len(), 2);
    // The user's digits train: the loss falls from the first epoch to the second.
    assert!(
        rows[1].train_loss < rows[0].train_loss,
        "{} then {}",
        rows[0].train_loss,
        rows[1].train_loss
    );
    // Images of another size are refused, naming the file and the shape the CNN takes.
    let small = crate::data::idx_file("small-idx3-ubyte", &[n as u32, 8, 8], &pixels[..n * 64]);
    let options = parse(&args(&format!(
        "--images {} --labels {}",
        small.display(),
        label_file.display()
    )))
    .unwrap();
    let e = prepare(&options).err().unwrap().to_string();
    assert!(
        e.contains("small-idx3-ubyte") && e.contains("28 x 28"),
        "{e}"
    );
    // Labels of one class are refused, naming the labels file.
    let one_class = crate::data::idx_file("one-class-idx1-ubyte", &[n as u32], &vec![7; n]);
    let options = parse(&args(&format!(
        "--data {data} --images {} --labels {}",
        images.display(),
        one_class.display()
    )))
    .unwrap();
    let e = prepare(&options).err().unwrap().to_string();
    assert!(
        e.contains("one-class-idx1-ubyte") && e.contains("label 7"),
        "{e}"
    );
    // --images needs --labels, and feeds the mnist experiment only.
    assert!(parse(&args(&format!("--images {}", images.display()))).is_err());
    let e = parse(
        &format!(
            "thucnews --images {} --labels {}",
            images.display(),
            label_file.display()
        )
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("mnist experiment") && e.contains("fix: "), "{e}");
}

#[test]
fn the_text_experiments_run_on_the_users_labelled_texts() {
    use advtrain_experiments::data::thucnews;
    use advtrain_experiments::run::Prepared;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let bundled = thucnews(&std::path::Path::new(root).join("data/thucnews_10w.tsv.xz")).unwrap();
    // 100 headlines of each of three classes, as the user's TSV and as a CSV with its own columns.
    let mut tsv = String::new();
    let mut csv = String::from("id,headline,topic\n");
    for class in 0..3u32 {
        let picked = bundled
            .labels
            .iter()
            .enumerate()
            .filter(|(_, y)| **y == class);
        for (k, (i, _)) in picked.take(100).enumerate() {
            let (name, text) = (&bundled.classes[class as usize], &bundled.texts[i]);
            tsv.push_str(&format!("{name}\t{text}\n"));
            csv.push_str(&format!("{k},\"{}\",{name}\n", text.replace('"', "")));
        }
    }
    let dir = std::env::temp_dir().join(format!("advtrain-texts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tsv_path, csv_path) = (dir.join("own.tsv"), dir.join("own.csv"));
    std::fs::write(&tsv_path, tsv).unwrap();
    std::fs::write(&csv_path, csv).unwrap();
    let args = |extra: String| {
        format!(
            "thucnews --quick --seeds 1 --methods baseline --epochs 2 --data {root}/data --out {} {extra}",
            dir.join("out").display()
        )
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let options = parse(&args(format!("--texts {}", tsv_path.display()))).unwrap();
    let prepared = prepare(&options).unwrap();
    let Prepared::Text { train, head, .. } = &prepared else {
        panic!("a text experiment prepares text")
    };
    assert_eq!(head.classes, 3);
    assert_eq!(train.1.len(), 240); // 80% of 300
    let bar = indicatif::ProgressBar::hidden();
    let rows = run_one(&options, &prepared, options.runs()[0], &bar).unwrap();
    assert!(
        rows[1].train_loss < rows[0].train_loss,
        "the user's texts train"
    );
    // The CSV with named columns gives the same classes; a missing column is named.
    let options = parse(&args(format!(
        "--texts {} --label-column topic --text-column headline",
        csv_path.display()
    )))
    .unwrap();
    let Prepared::Text { head, .. } = prepare(&options).unwrap() else {
        panic!("text")
    };
    assert_eq!(head.classes, 3);
    let options = parse(&args(format!("--texts {}", csv_path.display()))).unwrap();
    let e = prepare(&options).err().unwrap().to_string();
    assert!(
        e.contains("no column named \"label\"") && e.contains("headline"),
        "{e}"
    );
    // Column names are for CSV files; a TSV given them is refused rather than read another way.
    let options = parse(&args(format!(
        "--texts {} --label-column topic",
        tsv_path.display()
    )))
    .unwrap();
    let e = prepare(&options).err().unwrap().to_string();
    assert!(e.contains("--label-column") && e.contains(".csv"), "{e}");
    // Texts feed the text experiments only.
    let e = parse(
        &format!("mnist --texts {}", tsv_path.display())
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--texts") && e.contains("fix: "), "{e}");
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn eps_auto_takes_the_best_mean_dev_accuracy_and_a_tie_goes_to_the_smaller_radius() {
    use advtrain_experiments::report::select_radius;
    let at = |eps: f64, seed: u64, epoch: usize, dev: f64| EpochRow {
        eps,
        dev_accuracy: dev,
        ..row("fgm", seed, epoch, 0.0)
    };
    // The final epoch decides: 0.1 leads after epoch 1 and falls behind by epoch 2.
    let rows = vec![
        at(0.1, 1001, 1, 0.9),
        at(0.1, 1002, 1, 0.9),
        at(0.1, 1001, 2, 0.6),
        at(0.1, 1002, 2, 0.7),
        at(0.01, 1001, 1, 0.5),
        at(0.01, 1002, 1, 0.5),
        at(0.01, 1001, 2, 0.8),
        at(0.01, 1002, 2, 0.6),
        at(1.0, 1001, 2, 0.7),
        at(1.0, 1002, 2, 0.7),
    ];
    let (chosen, tried) = select_radius(&rows, "fgm").unwrap();
    assert_eq!(chosen, 0.01);
    let radii: Vec<f64> = tried.iter().map(|t| t.eps).collect();
    assert_eq!(radii, [0.01, 0.1, 1.0]);
    assert!((tried[1].dev.0 - 0.65).abs() < 1e-12 && tried[1].seeds == 2);
    assert_eq!(tried[1].collapsed, 0);
    // A selection seed that collapsed is counted against its radius.
    let mut with_collapse = rows.clone();
    with_collapse[3].predicted_classes = 1.0;
    let (_, tried) = select_radius(&with_collapse, "fgm").unwrap();
    assert_eq!((tried[0].collapsed, tried[1].collapsed), (0, 1));
    // 0.01 and 1.0 tie at 0.7: the smaller wins.
    assert_eq!(select_radius(&rows, "fgm").unwrap().0, 0.01);
    assert!(select_radius(&rows, "vat").is_none());
}

#[test]
fn eps_auto_chooses_on_dev_with_seeds_the_comparison_leaves_out() {
    use advtrain_experiments::cli::train_all;
    use advtrain_experiments::report::select_radius;
    use advtrain_experiments::rows::read_rows;
    // The flags' errors name the flag.
    for (line, flag) in [
        ("mnist --eps auto,0.1", "--eps"),
        ("mnist --eps 0.1 --eps-grid 0.1,1", "--eps-grid"),
        ("mnist --eps auto --eps-grid 0.1,0", "--eps-grid"),
        ("mnist --eps auto --selection-seeds 0", "--selection-seeds"),
        ("mnist --selection-seeds 3", "--selection-seeds"),
    ] {
        let e = parse(&args(line)).unwrap_err().to_string();
        assert!(e.contains(flag) && e.contains("fix: "), "{line}: {e}");
    }
    let o = parse(&args("mnist --eps auto")).unwrap();
    let selection = o.selection.clone().unwrap();
    assert_eq!(selection.grid, [0.25, 0.5, 1.0, 2.0, 4.0]); // MNIST's radius is 1
    assert_eq!(selection.seeds, 2);
    assert!(o.eps.is_empty());

    // One epoch of MNIST's quick set: FGM at two radii with one selection seed, then seed 1.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::env::temp_dir().join(format!("advtrain-eps-auto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let options = parse(&args(&format!(
        "mnist --quick --seeds 1 --epochs 1 --methods baseline,fgm --eps auto --eps-grid 0.3,3 \
         --selection-seeds 1 --data {root}/data --out {}",
        out.display()
    )))
    .unwrap();
    assert_eq!(options.selection_runs().len(), 2);
    let reported = train_all(&options).unwrap();
    let selection = read_rows(&out.join("selection.csv")).unwrap();
    assert!(
        selection
            .iter()
            .all(|r| r.seed == 1001 && r.method == "fgm")
    );
    let mut radii: Vec<f64> = selection.iter().map(|r| r.eps).collect();
    radii.sort_by(f64::total_cmp);
    assert_eq!(radii, [0.3, 3.0]);
    // The choice is the better dev accuracy of the two (the smaller radius on a tie), and the
    // reported runs use it with seed 1 only.
    let (low, high) = (&selection[0], &selection[1]);
    let (low, high) = if low.eps < high.eps {
        (low, high)
    } else {
        (high, low)
    };
    let expected = if high.dev_accuracy > low.dev_accuracy {
        high.eps
    } else {
        low.eps
    };
    assert_eq!(select_radius(&selection, "fgm").unwrap().0, expected);
    assert!(reported.iter().all(|r| r.seed == 1));
    assert!(
        reported
            .iter()
            .filter(|r| r.method == "fgm")
            .all(|r| r.eps == expected)
    );
    assert_eq!(reported.len(), 2);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("--eps auto") && summary.contains(&format!("fgm {expected}")),
        "{summary}"
    );
    let chosen = std::fs::read_to_string(out.join("selection.md")).unwrap();
    assert_eq!(chosen.matches("| chosen |").count(), 1, "{chosen}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The Laplacian regulariser trains by Taylor mode through the runner's models: the CNN on images
/// and the transformer on the embedding output, one forward pass (three streams) and one backward
/// pass per step, and its loss differs from the baseline's from the same start.
#[test]
fn the_laplacian_trains_by_taylor_mode_on_images_and_texts() {
    let bar = indicatif::ProgressBar::hidden();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for experiment in ["mnist", "thucnews"] {
        let line = format!(
            "{experiment} --quick --seeds 1 --epochs 1 --methods baseline,laplacian --data {root}/data --out {}",
            std::env::temp_dir()
                .join(format!(
                    "advtrain-laplacian-{}-{experiment}",
                    std::process::id()
                ))
                .display()
        );
        let options = parse(&args(&line)).unwrap();
        let prepared = prepare(&options).unwrap();
        let runs = options.runs();
        let baseline = run_one(&options, &prepared, runs[0], &bar).unwrap();
        let laplacian = run_one(&options, &prepared, runs[1], &bar).unwrap();
        assert_eq!(runs[1].method, Method::Laplacian);
        let row = &laplacian[0];
        assert!(
            row.train_loss.is_finite(),
            "{experiment}: {}",
            row.train_loss
        );
        assert_eq!(
            (row.passes_forward, row.passes_backward),
            (1, 1),
            "{experiment}"
        );
        assert_ne!(row.train_loss, baseline[0].train_loss, "{experiment}");
    }
}

/// `--seeds-form` runs a text experiment's FGM and gradient penalty as the seeds (and the clue
/// preset) do: the settings reach every run, `--eps auto`'s grid centres on the seeds' 0.5, the
/// explicit flags still override, mnist refuses it, and the matrix-target steps train.
#[test]
fn the_seeds_form_reaches_the_text_runs_and_mnist_refuses_it() {
    use advtrain::{Objective, StepNorm};
    let bar = indicatif::ProgressBar::hidden();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::env::temp_dir().join(format!("advtrain-seeds-form-{}", std::process::id()));
    let base = format!(
        "thucnews --quick --subset 500 --seeds 1 --epochs 1 --methods fgm,gradient-penalty --data {root}/data --out {}",
        out.display()
    );
    let seeds = parse(&args(&format!("{base} --seeds-form"))).unwrap();
    let hyper = seeds.hyper();
    assert!(hyper.matrix_target);
    assert_eq!(hyper.fgm_objective, Objective::AdversarialOnly);
    assert_eq!(hyper.gp_norm, StepNorm::Raw);
    assert_eq!((hyper.eps, hyper.gp_scale), (0.5, 2.0));
    // The optimiser and the batch stay the experiment's.
    let per_example = parse(&args(&base)).unwrap().hyper();
    assert!(!per_example.matrix_target);
    assert_eq!((hyper.lr, hyper.batch), (per_example.lr, per_example.batch));
    assert!(seeds.runs().iter().all(|r| r.eps == 0.5));
    let auto = parse(&args(&format!("{base} --seeds-form --eps auto"))).unwrap();
    assert_eq!(auto.selection.unwrap().grid, [0.125, 0.25, 0.5, 1.0, 2.0]);
    let overridden = parse(&args(&format!("{base} --seeds-form --gp-scale 1"))).unwrap();
    assert_eq!(overridden.hyper().gp_scale, 1.0);
    let e = parse(&args("mnist --seeds-form")).unwrap_err().to_string();
    assert!(e.contains("--seeds-form") && e.contains("text"), "{e}");
    // Both methods train on the matrix target, and differ from the per-example form.
    let prepared = prepare(&seeds).unwrap();
    let plain = parse(&args(&base)).unwrap();
    let plain_prepared = prepare(&plain).unwrap();
    for (run, other) in seeds.runs().into_iter().zip(plain.runs()) {
        let row = &run_one(&seeds, &prepared, run, &bar).unwrap()[0];
        let per_example_row = &run_one(&plain, &plain_prepared, other, &bar).unwrap()[0];
        assert!(row.train_loss.is_finite(), "{:?}", run.method);
        assert_ne!(
            row.train_loss, per_example_row.train_loss,
            "{:?}",
            run.method
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn repeated_methods_or_radii_and_a_length_without_room_are_refused() {
    let e = parse(&args("thucnews --methods baseline,fgm,fgm"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--methods") && e.contains("fgm twice"), "{e}");
    let e = parse(&args("thucnews --eps 0.5,0.50"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--eps") && e.contains("0.5 twice"), "{e}");
    // More seeds than could ever finish, which would also reach the selection seeds' numbers.
    let e = parse(&args("thucnews --seeds 1000000000000"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--seeds") && e.contains("1000 seeds"), "{e}");
    let e = parse(&args(
        "thucnews --eps auto --selection-seeds 18446744073709551615",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("--selection-seeds"), "{e}");
    let e = parse(&args("thucnews --eps auto --eps-grid 0.1,0.2,0.1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--eps-grid"), "{e}");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let options = parse(&args(&format!("thucnews --max-len 2 --data {root}/data"))).unwrap();
    let e = prepare(&options).err().unwrap().to_string();
    assert!(e.contains("--max-len") && e.contains("[CLS]"), "{e}");
}

#[test]
fn the_users_own_texts_are_used_whole_unless_a_subset_is_asked_for() {
    use advtrain_experiments::data::thucnews;
    use advtrain_experiments::run::Prepared;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let bundled = thucnews(&std::path::Path::new(root).join("data/thucnews_10w.tsv.xz")).unwrap();
    // More texts than the experiment's own subset of its bundled headlines (5,000).
    let tsv: String = (0..6000)
        .map(|i| {
            let label = &bundled.classes[bundled.labels[i] as usize];
            format!("{label}\t{}\n", bundled.texts[i])
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("advtrain-whole-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("own.tsv");
    std::fs::write(&path, tsv).unwrap();
    let train_size = |extra: &str| {
        let line = format!(
            "thucnews --max-len 32 --data {root}/data --texts {} {extra}",
            path.display()
        );
        match prepare(&parse(&args(&line)).unwrap()).unwrap() {
            Prepared::Text { train, .. } => train.1.len(),
            Prepared::Image(_) => panic!("a text experiment prepares text"),
        }
    };
    assert_eq!(train_size(""), 4800); // 80% of 6,000
    assert_eq!(train_size("--subset 1000"), 800);
}

#[test]
fn a_summary_is_written_again_from_its_results_with_the_paired_column() {
    use advtrain_experiments::report::rewrite_summary;
    use advtrain_experiments::rows::write_rows;
    let dir = std::env::temp_dir().join(format!("advtrain-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = rewrite_summary(&dir.join("none")).unwrap_err().to_string();
    assert!(e.contains("results.csv") && e.contains("fix: "), "{e}");
    // FGM beats the baseline by 3, 2 and 4 points on seeds 1 to 3.
    let rows: Vec<EpochRow> = [(1, 0.70, 0.73), (2, 0.72, 0.74), (3, 0.71, 0.75)]
        .iter()
        .flat_map(|&(seed, base, fgm)| [row("baseline", seed, 1, base), row("fgm", seed, 1, fgm)])
        .collect();
    write_rows(&dir.join("results.csv"), &rows).unwrap();
    let old = "What ran. Produced by `cargo run --release -- experiment x`.\n\n\
               | method | seeds | test accuracy | vs baseline | s / epoch |\n|---|---|---|---|---|\n";
    std::fs::write(dir.join("summary.md"), old).unwrap();
    let text = rewrite_summary(&dir).unwrap();
    assert!(text.starts_with("What ran. Produced by `cargo run --release -- experiment x`."));
    // Mean 3.00, standard deviation 1.00: t = 3 / (1 / sqrt 3) = 5.20 with 2 degrees of freedom.
    assert!(
        text.contains("| fgm | 3 |") && text.contains("+3.00 ± 1.00 (t = 5.20, p = 0.035)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.md")).unwrap(),
        text
    );
    // Written again, it keeps one note of the rewrite.
    let again = rewrite_summary(&dir).unwrap();
    assert_eq!(again.matches("advtrain summarise").count(), 1, "{again}");
}
