//! The command line of `cargo run --release -- experiment <name> [options]`.

use super::run::{Experiment, Method, Options};
use crate::{Error, Result};
use std::path::PathBuf;

/// The usage text.
pub const USAGE: &str = "usage: experiment <thucnews|mnist|rotten-tomatoes> [--methods a,b,..] [--seeds N] \
[--epochs N] [--eps E1,E2,..] [--subset N] [--quick] [--out DIR] [--data DIR]\n  methods: baseline, noise, fgm, gradient-penalty, \
pgd, freelb, vat, spectral-norm (default: all)\n  --eps: the radii to run the methods that have one \
at (several: a sweep, plotted as accuracy against eps); default: the experiment's own\n  --subset: examples drawn before the train/dev/test split (THUCNews: 5000 of 100000 unless given)\n  --quick: a subset and 2 epochs, a few minutes; \
results go to target/experiments/<name>-quick unless --out is given\n  full runs write to \
data/results/<name>";

fn bad(name: &'static str, reason: String) -> Error {
    Error::InvalidArgument {
        name,
        reason,
        fix: USAGE.into(),
    }
}

/// Parses the arguments after `experiment` into [`Options`].
pub fn parse(args: &[String]) -> Result<Options> {
    let name = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .ok_or_else(|| bad("experiment", "no experiment named".into()))?;
    let experiment = Experiment::parse(name)?;
    let mut options = Options {
        experiment,
        methods: experiment.methods(),
        seeds: 3,
        epochs: 0,
        quick: false,
        data_dir: PathBuf::from("data"),
        out_dir: PathBuf::new(),
        verbose: true,
        eps: Vec::new(),
        subset: None,
    };
    let mut out = None;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let mut value = |name: &'static str| {
            rest.next()
                .cloned()
                .ok_or_else(|| bad(name, "needs a value".into()))
        };
        let count = |name: &'static str, v: String| {
            v.parse::<usize>()
                .map_err(|_| bad(name, format!("{v:?} is not a count")))
        };
        match flag.as_str() {
            "--methods" => {
                options.methods = value("--methods")?
                    .split(',')
                    .map(Method::parse)
                    .collect::<Result<_>>()?
            }
            "--seeds" => options.seeds = count("--seeds", value("--seeds")?)?,
            "--epochs" => options.epochs = count("--epochs", value("--epochs")?)?,
            "--eps" => {
                options.eps = value("--eps")?
                    .split(',')
                    .map(|v| match v.parse::<f64>() {
                        Ok(e) if e > 0.0 && e.is_finite() => Ok(e),
                        _ => Err(bad("--eps", format!("{v:?} is not a positive number"))),
                    })
                    .collect::<Result<_>>()?
            }
            "--subset" => options.subset = Some(count("--subset", value("--subset")?)?),
            "--quick" => options.quick = true,
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--data" => options.data_dir = PathBuf::from(value("--data")?),
            other => return Err(bad("argument", format!("unknown argument {other:?}"))),
        }
    }
    if options.epochs == 0 {
        options.epochs = experiment.default_epochs(options.quick);
    }
    options.out_dir = out.unwrap_or_else(|| {
        if options.quick {
            PathBuf::from("target/experiments").join(format!("{name}-quick"))
        } else {
            PathBuf::from("data/results").join(name)
        }
    });
    Ok(options)
}

/// Parses, runs, and returns the summary table as text.
pub fn run(args: &[String]) -> Result<String> {
    let options = parse(args)?;
    println!(
        "experiment {}: {} runs ({} methods, {} seeds) x {} epochs{}, writing to {}",
        options.experiment.name(),
        options.runs().len(),
        options.methods.len(),
        options.seeds,
        options.epochs,
        if options.quick { " (quick)" } else { "" },
        options.out_dir.display()
    );
    println!("device: {}", crate::device::select().1);
    super::run::run(&options)?;
    let summary = std::fs::read_to_string(options.out_dir.join("summary.md")).map_err(|e| {
        Error::data(
            options.out_dir.join("summary.md").display(),
            None,
            e.to_string(),
            "check the output folder",
        )
    })?;
    Ok(summary)
}
