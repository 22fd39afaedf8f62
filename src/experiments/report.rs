//! Reports: the results table (one CSV row per run and epoch, written and read with polars), the
//! summary (final-epoch accuracy per method, mean +- standard deviation over seeds, and the difference
//! to the baseline with its standard error) and the figures. Book: "Experiments".

use super::run::{EpochRow, Options};
use crate::{Error, Result};
use polars::prelude::{Column, CsvReadOptions, CsvWriter, DataFrame, SerReader, SerWriter};
use std::path::Path;

fn polars_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.display().to_string(),
        line: None,
        reason: e.to_string(),
        fix: "delete the file to let the runner write it afresh".into(),
    }
}

/// Writes `rows` as CSV to `path` (written to a temporary name, then renamed).
pub fn write_rows(path: &Path, rows: &[EpochRow]) -> Result<()> {
    let f = |get: fn(&EpochRow) -> f64| rows.iter().map(get).collect::<Vec<f64>>();
    let u = |get: fn(&EpochRow) -> u64| rows.iter().map(get).collect::<Vec<u64>>();
    let s = |get: fn(&EpochRow) -> &str| rows.iter().map(get).collect::<Vec<&str>>();
    let columns = vec![
        Column::new("experiment".into(), s(|r| &r.experiment)),
        Column::new("method".into(), s(|r| &r.method)),
        Column::new("seed".into(), u(|r| r.seed)),
        Column::new("epoch".into(), u(|r| r.epoch as u64)),
        Column::new("train_loss".into(), f(|r| r.train_loss)),
        Column::new("dev_accuracy".into(), f(|r| r.dev_accuracy)),
        Column::new("test_accuracy".into(), f(|r| r.test_accuracy)),
        Column::new("fgsm_accuracy".into(), f(|r| r.fgsm_accuracy)),
        Column::new("pgd_accuracy".into(), f(|r| r.pgd_accuracy)),
        Column::new("passes_forward".into(), u(|r| r.passes_forward as u64)),
        Column::new("passes_backward".into(), u(|r| r.passes_backward as u64)),
        Column::new("seconds".into(), f(|r| r.seconds)),
    ];
    let mut frame = DataFrame::new(rows.len(), columns).map_err(|e| polars_error(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| polars_error(path, e))?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial).map_err(|e| polars_error(path, e))?;
    CsvWriter::new(&mut file)
        .finish(&mut frame)
        .map_err(|e| polars_error(path, e))?;
    std::fs::rename(&partial, path).map_err(|e| polars_error(path, e))?;
    Ok(())
}

/// Reads a results CSV written by [`write_rows`].
pub fn read_rows(path: &Path) -> Result<Vec<EpochRow>> {
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| polars_error(path, e))?;
    let column = |name: &str| -> Result<Vec<String>> {
        let c = frame.column(name).map_err(|e| polars_error(path, e))?;
        let c = c.str().map_err(|e| polars_error(path, e))?;
        Ok(c.iter().map(|v| v.unwrap_or("").to_string()).collect())
    };
    let number = |name: &str| -> Result<Vec<f64>> {
        column(name)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.parse::<f64>().map_err(|_| Error::Data {
                    path: path.display().to_string(),
                    line: Some(i + 2),
                    reason: format!("column {name}: {v:?} is not a number"),
                    fix: "delete the file to let the runner write it afresh".into(),
                })
            })
            .collect()
    };
    let (experiment, method) = (column("experiment")?, column("method")?);
    let [
        seed,
        epoch,
        loss,
        dev,
        test,
        fgsm,
        pgd,
        forward,
        backward,
        seconds,
    ] = [
        "seed",
        "epoch",
        "train_loss",
        "dev_accuracy",
        "test_accuracy",
        "fgsm_accuracy",
        "pgd_accuracy",
        "passes_forward",
        "passes_backward",
        "seconds",
    ]
    .map(number);
    let (seed, epoch, loss, dev, test) = (seed?, epoch?, loss?, dev?, test?);
    let (fgsm, pgd, forward, backward, seconds) = (fgsm?, pgd?, forward?, backward?, seconds?);
    Ok((0..frame.height())
        .map(|i| EpochRow {
            experiment: experiment[i].clone(),
            method: method[i].clone(),
            seed: seed[i] as u64,
            epoch: epoch[i] as usize,
            train_loss: loss[i],
            dev_accuracy: dev[i],
            test_accuracy: test[i],
            fgsm_accuracy: fgsm[i],
            pgd_accuracy: pgd[i],
            passes_forward: forward[i] as usize,
            passes_backward: backward[i] as usize,
            seconds: seconds[i],
        })
        .collect())
}

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// One method's line of the summary.
#[derive(Clone, Debug)]
pub struct Summary {
    pub method: String,
    pub seeds: usize,
    /// Mean and standard deviation over seeds of the final-epoch test accuracy.
    pub test: (f64, f64),
    /// Difference of means to the baseline and its standard error (sqrt(s1^2/n1 + s0^2/n0)).
    pub vs_baseline: Option<(f64, f64)>,
    pub fgsm: (f64, f64),
    pub pgd: (f64, f64),
    /// Mean seconds per epoch.
    pub seconds_per_epoch: f64,
}

/// Summarises the final epoch of every run, per method, in the order the methods first appear.
pub fn summarise(rows: &[EpochRow]) -> Vec<Summary> {
    let last = rows.iter().map(|r| r.epoch).max().unwrap_or(0);
    let mut methods: Vec<&str> = Vec::new();
    for r in rows {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    let finals = |m: &str, get: fn(&EpochRow) -> f64| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.method == m && r.epoch == last)
            .map(get)
            .collect()
    };
    let baseline = finals("baseline", |r| r.test_accuracy);
    methods
        .iter()
        .map(|&m| {
            let test = finals(m, |r| r.test_accuracy);
            let (mean, std) = mean_std(&test);
            let vs_baseline = (m != "baseline" && !baseline.is_empty()).then(|| {
                let (b_mean, b_std) = mean_std(&baseline);
                let se = (std.powi(2) / test.len() as f64 + b_std.powi(2) / baseline.len() as f64)
                    .sqrt();
                (mean - b_mean, se)
            });
            let epochs: Vec<f64> = rows
                .iter()
                .filter(|r| r.method == m)
                .map(|r| r.seconds)
                .collect();
            Summary {
                method: m.to_string(),
                seeds: test.len(),
                test: (mean, std),
                vs_baseline,
                fgsm: mean_std(&finals(m, |r| r.fgsm_accuracy)),
                pgd: mean_std(&finals(m, |r| r.pgd_accuracy)),
                seconds_per_epoch: mean_std(&epochs).0,
            }
        })
        .collect()
}

fn pct((mean, std): (f64, f64)) -> String {
    if mean.is_nan() {
        "-".into()
    } else {
        format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * std)
    }
}

/// The summary as a Markdown table (accuracies in percent).
pub fn markdown(summary: &[Summary], robust: bool) -> String {
    let mut out = String::from("| method | seeds | test accuracy | vs baseline |");
    out += if robust {
        " FGSM accuracy | PGD-10 accuracy | s / epoch |\n|---|---|---|---|---|---|---|\n"
    } else {
        " s / epoch |\n|---|---|---|---|---|\n"
    };
    for s in summary {
        let vs = s.vs_baseline.map_or("-".into(), |(d, se)| {
            format!("{:+.2} ± {:.2}", 100.0 * d, 100.0 * se)
        });
        out += &format!("| {} | {} | {} | {vs} |", s.method, s.seeds, pct(s.test));
        if robust {
            out += &format!(" {} | {} |", pct(s.fgsm), pct(s.pgd));
        }
        out += &format!(" {:.1} |\n", s.seconds_per_epoch);
    }
    out
}

/// Writes results.csv, summary.md and the figures (learning curves, final accuracy per method) under
/// `options.out_dir`.
pub fn write_all(options: &Options, rows: &[EpochRow]) -> Result<()> {
    let out = &options.out_dir;
    write_rows(&out.join("results.csv"), rows)?;
    let summary = summarise(rows);
    let robust = summary.iter().any(|s| !s.fgsm.0.is_nan());
    let name = options.experiment.name();
    let command = format!(
        "cargo run --release -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let text = format!(
        "Final-epoch test accuracy (%), mean ± standard deviation over seeds; the difference to the \
         baseline ± its standard error. Produced by `{command}`.\n\n{}",
        markdown(&summary, robust)
    );
    let write = |file: &str, contents: &str| -> Result<()> {
        let path = out.join(file);
        std::fs::write(&path, contents).map_err(|e| polars_error(&path, e))
    };
    write("summary.md", &text)?;
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for s in &summary {
        let last = rows.iter().map(|r| r.epoch).max().unwrap_or(0);
        let points = (1..=last)
            .map(|e| {
                let dev: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.method == s.method && r.epoch == e)
                    .map(|r| 100.0 * r.dev_accuracy)
                    .collect();
                (e as f64, mean_std(&dev).0)
            })
            .collect();
        curves.push((s.method.clone(), points));
    }
    let series: Vec<(&str, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(m, p)| (m.as_str(), p.clone()))
        .collect();
    let figure = advtrain_plots::lines(
        &format!("{name}: dev accuracy by epoch (mean over seeds)"),
        "epoch",
        "dev accuracy (%)",
        &series,
    );
    write("learning_curves.svg", figure.svg())?;
    let labels: Vec<&str> = summary.iter().map(|s| s.method.as_str()).collect();
    let values: Vec<f64> = summary.iter().map(|s| 100.0 * s.test.0).collect();
    let figure = advtrain_plots::bars(
        &format!("{name}: test accuracy"),
        "accuracy (%)",
        &labels,
        &values,
    );
    write("test_accuracy.svg", figure.svg())?;
    if robust {
        let values: Vec<f64> = summary.iter().map(|s| 100.0 * s.pgd.0).collect();
        let figure = advtrain_plots::bars(
            &format!("{name}: accuracy under PGD-10"),
            "accuracy (%)",
            &labels,
            &values,
        );
        write("pgd_accuracy.svg", figure.svg())?;
    }
    Ok(())
}
