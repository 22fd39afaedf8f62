//! The command line (clap): `advtrain [verify [--markdown]]` and `advtrain experiment <name> [options]`.
//! `--help` works for every command; an unknown command or flag prints usage and exits non-zero.

use super::rows::EpochRow;
use super::run::{Experiment, Method, Options, Run, Selection, TextFile, TextSource};
use advtrain::{Error, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// advtrain: adversarial training and smoothness regularisation for candle, every equivalence
/// checked numerically.
#[derive(Debug, Parser)]
#[command(name = "advtrain", version)]
pub struct Cli {
    /// What to run (default: verify).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify every equivalence of the book on small models (f64, CPU, fixed seeds) and print a
    /// table; exits with status 1 if a check fails.
    Verify {
        /// Print the table as Markdown.
        #[arg(long)]
        markdown: bool,
    },
    /// Train every method over seeds on an experiment's data and write the results table, summary
    /// and figures (book chapter "Experiments").
    Experiment(Box<ExperimentArgs>),
    /// Write DIR/summary.md again from DIR/results.csv with the current table (the difference paired
    /// by seed and its t-test included), keeping the text above the old table.
    Summarise {
        /// An experiment's output folder (holding results.csv).
        dir: PathBuf,
    },
}

/// The options of `advtrain experiment`.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// The experiment: thucnews, mnist, rotten-tomatoes, or clue (a pretrained Chinese BERT from
    /// --model on CLUE files from --train and --dev).
    pub name: String,
    /// Methods, comma-separated: baseline, noise, laplacian, fgm, gradient-penalty, pgd, freelb, vat,
    /// spectral-norm (default: the experiment's own).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Seeds per method.
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Epochs (default: the experiment's own).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Radii for the methods that have one, comma-separated (several: a sweep, plotted as accuracy
    /// against eps); default: the experiment's own. `auto`: each method's radius is chosen on the dev
    /// set from --eps-grid by --selection-seeds seeds of their own, which the reported comparison
    /// leaves out (written to selection.md).
    #[arg(long, value_delimiter = ',')]
    pub eps: Vec<String>,
    /// With `--eps auto`: the radii to choose from, comma-separated (default: the experiment's
    /// radius times 1/4, 1/2, 1, 2 and 4).
    #[arg(long, value_delimiter = ',')]
    pub eps_grid: Vec<f64>,
    /// With `--eps auto`: the seeds that choose each radius (default 2; numbered from 1001, so never
    /// one of the reported seeds).
    #[arg(long)]
    pub selection_seeds: Option<usize>,
    /// Examples drawn before the train/dev/test split (the training file's, with --train). Default:
    /// the experiment's own for its bundled data (THUCNews: 5000 of 100000), all of your own data
    /// (--texts, --train, --images); --quick draws the experiment's small subset either way.
    #[arg(long)]
    pub subset: Option<usize>,
    /// A subset and 2 epochs, a few minutes; results go to target/experiments/NAME-quick unless
    /// --out is given.
    #[arg(long)]
    pub quick: bool,
    /// Where results go (full runs: data/results/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the data folder is.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// mnist only: images in IDX format (gzipped or not, as MNIST and Fashion-MNIST ship them)
    /// instead of the bundled digits; needs --labels.
    #[arg(long, requires = "labels")]
    pub images: Option<PathBuf>,
    /// mnist only: the labels that go with --images (IDX).
    #[arg(long, requires = "images")]
    pub labels: Option<PathBuf>,
    /// Text experiments: one file of labelled texts instead of the bundled ones, split 80/10/10
    /// (60/20/20 for rotten-tomatoes) by seed 0. TSV `label<TAB>text`; CSV with a header (a .csv
    /// name); CLUE JSONL with `label` and `sentence` (a .json or .jsonl name); gzip, bzip2 or xz
    /// compressed or not. Classes come from the data.
    #[arg(long, conflicts_with = "train")]
    pub texts: Option<PathBuf>,
    /// Text experiments: the training file (formats as --texts); needs --dev.
    #[arg(long, requires = "dev")]
    pub train: Option<PathBuf>,
    /// With --train: the dev file; its labels must occur in the training file.
    #[arg(long, requires = "train")]
    pub dev: Option<PathBuf>,
    /// With --train: the test file (without one, the test columns report the dev set).
    #[arg(long, requires = "train")]
    pub test: Option<PathBuf>,
    /// With a CSV file: the label column's name.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// With a CSV file: the text column's name.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Text experiments: a pretrained BERT-family model in the Hugging Face layout (config.json,
    /// model.safetensors, tokenizer.json or vocab.txt) to fine-tune; default: the experiment's
    /// (rotten-tomatoes: all-MiniLM-L6-v2 from scripts/setup.sh; thucnews: a small encoder from
    /// scratch).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Text experiments: the tokenizer, a tokenizer.json or a WordPiece vocabulary (one token per
    /// line); default: the model's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// FGM's objective: clean-plus-adversarial or adversarial (default: the experiment's own;
    /// clue trains on the adversarial loss alone, as the seeds do).
    #[arg(long)]
    pub fgm_objective: Option<String>,
    /// Gradient penalty's weight as a multiple of eps (default: the experiment's own: 0.5, which
    /// matches FGM on clean + adversarial under Adam; clue 2, the seeds'). Runs before 2026-12-02
    /// used 1 (book, "FGM and gradient penalty", "Matching the weights").
    #[arg(long)]
    pub gp_scale: Option<f64>,
    /// Text experiments: FGM and gradient penalty in the seeds' form, as the clue experiment runs
    /// them: one step on the whole embedding matrix, FGM on the adversarial loss alone, gradient
    /// penalty `eps ||g||^2` of the matrix gradient, default eps 0.5 (instead of per-sentence steps
    /// on the embedding output).
    #[arg(long)]
    pub seeds_form: bool,
    /// Text experiments: the maximum sequence length in tokens; default: the experiment's for its
    /// bundled texts, else the 99th percentile of the training texts' token counts (printed).
    #[arg(long)]
    pub max_len: Option<usize>,
}

fn bad(name: &'static str, reason: String) -> Error {
    Error::InvalidArgument {
        name,
        reason,
        fix: "see `advtrain experiment --help`".into(),
    }
}

/// Parses the arguments after `experiment` into [`Options`] (for tests and embedding; the binary
/// parses with [`Cli`]).
pub fn parse(args: &[String]) -> Result<Options> {
    #[derive(Parser)]
    struct Experiment {
        #[command(flatten)]
        args: ExperimentArgs,
    }
    let parsed = Experiment::try_parse_from(
        std::iter::once("experiment".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| {
        let text = e.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        bad("argument", first.to_string())
    })?;
    options(parsed.args)
}

/// Validates parsed arguments into [`Options`].
pub fn options(args: ExperimentArgs) -> Result<Options> {
    let experiment = Experiment::parse(&args.name)?;
    let methods = if args.methods.is_empty() {
        experiment.methods()
    } else {
        args.methods
            .iter()
            .map(|m| Method::parse(m))
            .collect::<Result<_>>()?
    };
    if let Some(i) = first_repeat(&methods) {
        return Err(bad("--methods", format!("lists {} twice", args.methods[i])));
    }
    advtrain::error::check_count("--seeds", args.seeds)?;
    if args.seeds > MAX_SEEDS {
        return Err(bad(
            "--seeds",
            format!("{} is more than {MAX_SEEDS} seeds a method", args.seeds),
        ));
    }
    let (eps, selection) = radii(&args, experiment.preset(args.seeds_form).eps)?;
    for (flag, values) in [
        ("--eps", &eps),
        ("--eps-grid", selection.as_ref().map_or(&eps, |s| &s.grid)),
    ] {
        if let Some(i) = first_repeat(values) {
            return Err(bad(flag, format!("lists {} twice", values[i])));
        }
    }
    if args.epochs == Some(0) {
        return Err(bad("--epochs", "must be at least 1".into()));
    }
    let epochs = args
        .epochs
        .unwrap_or_else(|| experiment.default_epochs(args.quick));
    let name = experiment.name();
    let out_dir = args.out.unwrap_or_else(|| {
        if args.quick {
            PathBuf::from("target/experiments").join(format!("{name}-quick"))
        } else {
            PathBuf::from("data/results").join(name)
        }
    });
    let images = match (args.images, args.labels) {
        (Some(images), Some(labels)) => {
            if experiment != Experiment::Mnist {
                return Err(bad(
                    "--images",
                    format!(
                        "IDX images feed the mnist experiment, not {}",
                        experiment.name()
                    ),
                ));
            }
            Some((images, labels))
        }
        _ => None,
    };
    let file = |path: PathBuf| TextFile {
        path,
        label_column: args.label_column.clone(),
        text_column: args.text_column.clone(),
    };
    let texts = match (args.texts, args.train, args.dev) {
        (Some(path), _, _) => Some(TextSource::One(file(path))),
        (None, Some(train), Some(dev)) => Some(TextSource::Files {
            train: file(train),
            dev: file(dev),
            test: args.test.map(file),
        }),
        _ => None,
    };
    if !experiment.is_text() {
        for (flag, given) in [
            ("--texts", texts.is_some()),
            ("--model", args.model.is_some()),
            ("--tokenizer", args.tokenizer.is_some()),
            ("--max-len", args.max_len.is_some()),
            ("--seeds-form", args.seeds_form),
        ] {
            if given {
                return Err(bad(
                    "argument",
                    format!(
                        "{flag} is for the text experiments (thucnews, rotten-tomatoes, clue), not mnist"
                    ),
                ));
            }
        }
    }
    let fgm_objective = match args.fgm_objective.as_deref() {
        None => None,
        Some("clean-plus-adversarial") => Some(advtrain::Objective::CleanPlusAdversarial),
        Some("adversarial") => Some(advtrain::Objective::AdversarialOnly),
        Some(other) => {
            return Err(bad(
                "--fgm-objective",
                format!("{other:?}: use clean-plus-adversarial or adversarial"),
            ));
        }
    };
    if let Some(scale) = args.gp_scale
        && !(scale.is_finite() && scale > 0.0)
    {
        return Err(bad(
            "--gp-scale",
            format!("{scale} is not a positive number"),
        ));
    }
    Ok(Options {
        fgm_objective,
        gp_scale: args.gp_scale,
        seeds_form: args.seeds_form,
        texts,
        model: args.model,
        tokenizer: args.tokenizer,
        max_len: args.max_len,
        images,
        experiment,
        methods,
        seeds: args.seeds,
        epochs,
        quick: args.quick,
        data_dir: args.data,
        out_dir,
        verbose: true,
        eps,
        selection,
        subset: args.subset,
    })
}

/// The most seeds a method runs: reported seeds count from 1, selection seeds from 1001, so the two
/// never meet; a run takes minutes at the least, so more would never finish anyway.
const MAX_SEEDS: usize = 1000;

/// The index of the first value equal to an earlier one: a repeated run would resume the first
/// one's folder and count its seeds twice.
fn first_repeat<T: PartialEq>(values: &[T]) -> Option<usize> {
    (1..values.len()).find(|&i| values[..i].contains(&values[i]))
}

/// `--eps`, `--eps-grid` and `--selection-seeds`: fixed radii, or the grid `--eps auto` chooses from.
fn radii(args: &ExperimentArgs, default_eps: f64) -> Result<(Vec<f64>, Option<Selection>)> {
    let positive = |flag: &'static str, values: &[f64]| match values
        .iter()
        .find(|e| !(e.is_finite() && **e > 0.0))
    {
        Some(bad_eps) => Err(bad(flag, format!("{bad_eps} is not a positive number"))),
        None => Ok(()),
    };
    if args.eps.len() == 1 && args.eps[0] == "auto" {
        let seeds = args.selection_seeds.unwrap_or(2);
        advtrain::error::check_count("--selection-seeds", seeds)?;
        if seeds > MAX_SEEDS {
            return Err(bad(
                "--selection-seeds",
                format!("{seeds} is more than {MAX_SEEDS} seeds a method"),
            ));
        }
        positive("--eps-grid", &args.eps_grid)?;
        let grid = if args.eps_grid.is_empty() {
            Selection::default_grid(default_eps)
        } else {
            args.eps_grid.clone()
        };
        return Ok((Vec::new(), Some(Selection { grid, seeds })));
    }
    if !args.eps_grid.is_empty() {
        return Err(bad(
            "--eps-grid",
            "is the grid `--eps auto` chooses from; pass --eps auto with it".into(),
        ));
    }
    if args.selection_seeds.is_some() {
        return Err(bad(
            "--selection-seeds",
            "are the seeds `--eps auto` chooses with; pass --eps auto with it".into(),
        ));
    }
    let eps = args
        .eps
        .iter()
        .map(|e| {
            e.parse::<f64>().map_err(|_| {
                bad(
                    "--eps",
                    format!("{e:?} is neither a number nor `auto` (which stands alone)"),
                )
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    positive("--eps", &eps)?;
    Ok((eps, None))
}

/// Runs an experiment and returns the summary table as text.
pub fn run(options: &Options) -> Result<String> {
    println!(
        "experiment {}: {} runs ({} methods, {} seeds) x {} epochs{}, writing to {}",
        options.experiment.name(),
        options.selection_runs().len() + options.runs().len(),
        options.methods.len(),
        options.seeds,
        options.epochs,
        if options.quick { " (quick)" } else { "" },
        options.out_dir.display()
    );
    if let Some(selection) = &options.selection {
        println!(
            "--eps auto: each radius chosen on dev from {:?} by seeds {}..={}, left out of the comparison",
            selection.grid,
            super::run::SELECTION_SEED_BASE + 1,
            super::run::SELECTION_SEED_BASE + selection.seeds as u64
        );
    }
    println!("device: {}", advtrain::device::select().1);
    train_all(options)?;
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

/// Runs every method over every seed; returns all rows and writes the results table, the summary
/// and the figures under `options.out_dir`. With `--eps auto`, the selection runs come first: each
/// method's radius is the one with the best mean final dev accuracy over the selection seeds
/// (written to selection.md and selection.csv), and the reported seeds then run at it.
pub fn train_all(options: &Options) -> Result<Vec<EpochRow>> {
    advtrain::error::check_count("--seeds", options.seeds)?;
    advtrain::error::check_count("--epochs", options.epochs)?;
    let prepared = super::run::prepare(options)?;
    let bars = indicatif::MultiProgress::new();
    let selecting = options.selection_runs();
    let total = selecting.len() + options.runs().len();
    let overall = bars.add(indicatif::ProgressBar::new(total as u64));
    overall.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} runs, {elapsed}")
            .expect("a valid template"),
    );
    overall.set_prefix(options.experiment.name());
    let train = |runs: Vec<Run>| -> Result<Vec<EpochRow>> {
        let mut rows = Vec::new();
        for run in runs {
            let bar = bars.add(indicatif::ProgressBar::new(0));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  [{bar:30}] {pos}/{len} batches {msg} ({eta})",
                )
                .expect("a valid template"),
            );
            rows.extend(super::run::run_one(options, &prepared, run, &bar)?);
            bar.finish_and_clear();
            overall.inc(1);
        }
        Ok(rows)
    };
    let (runs, note) = match &options.selection {
        None => (options.runs(), None),
        Some(selection) => {
            let rows = train(selecting)?;
            let chosen = super::report::write_selection(options, selection, &rows)?;
            let note = chosen
                .iter()
                .map(|(m, e)| format!("{} {e}", m.name()))
                .collect::<Vec<_>>()
                .join(", ");
            let note = format!(
                "Radii chosen by `--eps auto` on the dev set from {:?}, by seeds {}-{}, which this \
                 table leaves out (selection.md): {note}.",
                selection.grid,
                super::run::SELECTION_SEED_BASE + 1,
                super::run::SELECTION_SEED_BASE + selection.seeds as u64
            );
            (options.runs_at(&chosen), Some(note))
        }
    };
    let rows = train(runs)?;
    overall.finish();
    super::report::write_all(options, &rows, note.as_deref())?;
    Ok(rows)
}
