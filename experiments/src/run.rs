//! The experiments' runner: every method on a task, over seeds, with a checkpoint per epoch and a row
//! of metrics per epoch. It owns the training loop (the library does not); each method is called
//! exactly as a user would call it. Book: "Experiments".
//!
//! Reproducibility: the model's initial weights come from the seed; the data order and every random
//! draw of epoch `e` come from `Rng::new(mix(seed, e))`, so a run resumed from the checkpoint of epoch
//! `e - 1` continues exactly as the uninterrupted run would.

use super::checkpoint::{self, Adam, io_error};
use super::data::{
    Examples, ImageDataset, Split, TextDataset, clue_jsonl, idx_images, labelled_csv, labelled_tsv,
    mnist_csv, rotten_tomatoes, split, subsample, thucnews,
};
use super::rows::EpochRow;
use super::tokenize::{TextTokenizer, pad_batch};
use advtrain::Method as TrainingMethod;
use advtrain::models::{BertClassifier, BertConfig, Cnn, Head, Pooling};
use advtrain::{
    Accumulator, Batch, CurvatureMethod, Error, Fgm, FreeLb, GradientCheck, GradientPenalty, Jet,
    Laplacian, Noise, Objective, Passes, Pgd, Plain, Result, Rng, Scope, Step, StepNorm, Target,
    Vat,
};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A training method of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Baseline,
    Noise,
    /// The noise's second-order equivalent `sigma^2/2 tr(H)`, one Hutchinson probe by Taylor mode.
    Laplacian,
    Fgm,
    GradientPenalty,
    Pgd,
    FreeLb,
    Vat,
    SpectralNorm,
}

impl Method {
    /// Every method, in the order tables list them.
    pub const ALL: [Method; 9] = [
        Method::Baseline,
        Method::Noise,
        Method::Laplacian,
        Method::Fgm,
        Method::GradientPenalty,
        Method::Pgd,
        Method::FreeLb,
        Method::Vat,
        Method::SpectralNorm,
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Noise => "noise",
            Method::Laplacian => "laplacian",
            Method::Fgm => "fgm",
            Method::GradientPenalty => "gradient-penalty",
            Method::Pgd => "pgd",
            Method::FreeLb => "freelb",
            Method::Vat => "vat",
            Method::SpectralNorm => "spectral-norm",
        }
    }

    /// The method called `name`.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::InvalidArgument {
                name: "--methods",
                reason: format!("unknown method {name:?}"),
                fix: format!("use some of: {}", Self::ALL.map(Method::name).join(", ")),
            })
    }

    /// Whether the method has a radius (or weight) `eps`; the others ignore `--eps`.
    pub fn uses_eps(self) -> bool {
        !matches!(
            self,
            Method::Baseline | Method::Noise | Method::Laplacian | Method::SpectralNorm
        )
    }
}

/// The data set and model of an experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Experiment {
    /// THUCNews headlines, the small transformer from scratch (the TNEWS stand-in).
    Thucnews,
    /// MNIST 5k, the small CNN, with robust accuracy under FGSM and PGD.
    Mnist,
    /// Rotten Tomatoes snippets (fresh / rotten), the pretrained all-MiniLM-L6-v2 fine-tuned.
    RottenTomatoes,
    /// The seeds' experiment: a pretrained Chinese BERT (`--model`) fine-tuned on CLUE TNEWS or
    /// IFLYTEK files, with the seeds' settings (embedding-matrix FGM at 0.5, adversarial loss
    /// only; gradient penalty `0.5 ||grad||^2` at 1; Adam 2e-5; the first token's vector).
    Clue,
}

impl Experiment {
    /// The experiment called `name`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "thucnews" => Ok(Self::Thucnews),
            "mnist" => Ok(Self::Mnist),
            "rotten-tomatoes" => Ok(Self::RottenTomatoes),
            "clue" => Ok(Self::Clue),
            other => Err(Error::InvalidArgument {
                name: "experiment",
                reason: format!("unknown experiment {other:?}"),
                fix: "use thucnews, mnist, rotten-tomatoes or clue".into(),
            }),
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Thucnews => "thucnews",
            Self::Mnist => "mnist",
            Self::RottenTomatoes => "rotten-tomatoes",
            Self::Clue => "clue",
        }
    }

    /// Whether the experiment classifies texts (and takes `--texts`, `--train`, `--model`, ...).
    pub fn is_text(self) -> bool {
        self != Self::Mnist
    }

    /// Epochs when `--epochs` is not given.
    pub fn default_epochs(self, quick: bool) -> usize {
        match (self, quick) {
            (Self::RottenTomatoes, _) | (Self::Clue, true) => 1,
            (_, true) => 2,
            (Self::Clue, false) => 3,
            (Self::Thucnews, false) => 3,
            (Self::Mnist, false) => 10,
        }
    }

    /// Examples drawn before the split when `--subset` is not given: THUCNews 5,000 of its 100,000
    /// headlines (the whole set takes about a day per seed on two cores), MNIST all 5,000; quick runs
    /// 2,000 and 1,500.
    pub fn default_subset(self, quick: bool) -> usize {
        match (self, quick) {
            (Self::Thucnews, true) => 2_000,
            (Self::Thucnews, false) => 5_000,
            (Self::Mnist, true) => 1_500,
            (Self::Mnist, false) => 5_000,
            (Self::RottenTomatoes, true) => 400,
            (Self::RottenTomatoes, false) => 2_500,
            (Self::Clue, true) => 400,
            (Self::Clue, false) => usize::MAX,
        }
    }

    /// The methods run when `--methods` is not given: all of them, but for fine-tuning MiniLM on two
    /// CPU cores baseline, FGM and gradient penalty (spectral norm would change the pretrained
    /// function; the others can be asked for).
    pub fn methods(self) -> Vec<Method> {
        match self {
            Self::RottenTomatoes | Self::Clue => {
                vec![Method::Baseline, Method::Fgm, Method::GradientPenalty]
            }
            _ => Method::ALL.to_vec(),
        }
    }
}

/// How an experiment runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub experiment: Experiment,
    pub methods: Vec<Method>,
    pub seeds: usize,
    pub epochs: usize,
    /// A small subset and short sequences: minutes, for smoke tests.
    pub quick: bool,
    /// Where data/ is.
    pub data_dir: PathBuf,
    /// Where results, checkpoints and figures go.
    pub out_dir: PathBuf,
    /// Print a line per epoch.
    pub verbose: bool,
    /// Radii to run the methods that have one at (`--eps`); empty: the experiment's default.
    pub eps: Vec<f64>,
    /// `--eps auto`: each method's radius chosen on dev by seeds of its own ([`Selection`]).
    pub selection: Option<Selection>,
    /// How many examples to draw (fixed seed) before the split (`--subset`); `None`: the
    /// experiment's default for the mode ([`Experiment::default_subset`]).
    pub subset: Option<usize>,
    /// MNIST-shaped images and their labels from IDX files (`--images`, `--labels`) instead of the
    /// bundled CSV: the `mnist` experiment on the user's own digits (or Fashion-MNIST).
    pub images: Option<(PathBuf, PathBuf)>,
    /// Labelled texts instead of the bundled ones (`--texts`, or `--train` / `--dev` / `--test`).
    pub texts: Option<TextSource>,
    /// A pretrained model in the Hugging Face layout (`--model`) instead of the experiment's.
    pub model: Option<PathBuf>,
    /// The tokenizer (`--tokenizer`: a tokenizer.json or a WordPiece vocabulary) instead of the
    /// model's.
    pub tokenizer: Option<PathBuf>,
    /// FGM's objective instead of the experiment's (`--fgm-objective`).
    pub fgm_objective: Option<Objective>,
    /// Gradient penalty's weight as a multiple of eps instead of the experiment's (`--gp-scale`).
    pub gp_scale: Option<f64>,
    /// Text experiments: FGM and gradient penalty in the seeds' form instead of per example
    /// (`--seeds-form`, [`Hyper::seeds_form`]).
    pub seeds_form: bool,
    /// The maximum sequence length (`--max-len`); `None`: the experiment's, or the 99th
    /// percentile of the training texts' token counts for the user's texts.
    pub max_len: Option<usize>,
}

/// A file of labelled texts, its format by its extension (before any `.gz`, `.bz2` or `.xz`):
/// `.csv`, CSV with a header whose label and text columns are named; `.json` or `.jsonl`, CLUE JSONL
/// (`label`, `sentence`); anything else, TSV `label<TAB>text`.
#[derive(Clone, Debug, PartialEq)]
pub struct TextFile {
    pub path: PathBuf,
    pub label_column: String,
    pub text_column: String,
}

impl TextFile {
    /// The labelled texts; class names are the sorted distinct labels, or `classes` (a training
    /// file's) when given, where a label outside them is an error at its line.
    pub fn load(&self, classes: Option<&[String]>) -> Result<TextDataset> {
        let name = self.path.to_string_lossy().to_lowercase();
        let stem = name
            .trim_end_matches(".gz")
            .trim_end_matches(".bz2")
            .trim_end_matches(".xz");
        if stem.ends_with(".csv") {
            labelled_csv(&self.path, &self.label_column, &self.text_column, classes)
        } else if self.label_column != "label" || self.text_column != "text" {
            Err(Error::InvalidArgument {
                name: match self.label_column != "label" {
                    true => "--label-column",
                    false => "--text-column",
                },
                reason: format!(
                    "column names apply to CSV files; {} is read as TSV or CLUE JSONL by its name",
                    self.path.display()
                ),
                fix: "give the file a .csv name, or leave out --label-column and --text-column"
                    .into(),
            })
        } else if stem.ends_with(".json") || stem.ends_with(".jsonl") {
            clue_jsonl(&self.path, classes)
        } else {
            labelled_tsv(&self.path, classes)
        }
    }
}

/// The user's labelled texts: one file split by seed 0, or separate files.
#[derive(Clone, Debug, PartialEq)]
pub enum TextSource {
    /// One file (`--texts`), split by seed 0 in the experiment's proportions.
    One(TextFile),
    /// `--train` and `--dev`, and `--test` when given (CLUE's test files have no labels: without
    /// one, the test columns report the dev set). Classes come from the training file.
    Files {
        train: TextFile,
        dev: TextFile,
        test: Option<TextFile>,
    },
}

/// The 99th percentile of the token counts of `encoded` (the texts' ids with the special tokens,
/// truncated to `limit`): the maximum sequence length for the user's texts. Printed, so a run says
/// what it chose.
fn length_percentile(encoded: &[Vec<u32>], limit: usize) -> usize {
    let mut lengths: Vec<usize> = encoded.iter().map(Vec::len).collect();
    lengths.sort_unstable();
    let at = (lengths.len() * 99).div_ceil(100).clamp(1, lengths.len()) - 1;
    let max_len = lengths[at].max(3);
    println!(
        "maximum sequence length {max_len}: the 99th percentile of the token counts of {} texts \
         (at most {limit})",
        lengths.len()
    );
    max_len
}

/// One training run: a method at a radius with a seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Run {
    pub method: Method,
    /// The method's radius (the experiment's default for methods without one).
    pub eps: f64,
    pub seed: u64,
}

/// The seeds of `--eps auto`'s selection runs are numbered from here: 1001, 1002, ..., never one of
/// the reported seeds 1..=`--seeds`.
pub const SELECTION_SEED_BASE: u64 = 1000;

/// `--eps auto`: the radii tried, and how many seeds of their own try each on the dev set.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub grid: Vec<f64>,
    pub seeds: usize,
}

impl Selection {
    /// The default grid: the experiment's radius times 1/4, 1/2, 1, 2 and 4.
    pub fn default_grid(eps: f64) -> Vec<f64> {
        [0.25, 0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|f| {
                let e: f64 = f * eps;
                // Short decimals for folder names and tables (0.0075, not 0.007499999999999999).
                (e * 1e12).round() / 1e12
            })
            .collect()
    }
}

impl Options {
    /// The hyper-parameters every method runs with: the experiment's, in the seeds' form with
    /// `--seeds-form`, then `--fgm-objective` and `--gp-scale` where given (the radius is each run's).
    pub fn hyper(&self) -> Hyper {
        let preset = self.experiment.preset(self.seeds_form);
        Hyper {
            fgm_objective: self.fgm_objective.unwrap_or(preset.fgm_objective),
            gp_scale: self.gp_scale.unwrap_or(preset.gp_scale),
            ..preset
        }
    }

    /// Every run, in table order: each method, at each radius where it has one, with each seed.
    /// With `--eps auto` ([`Options::selection`]) these are the runs at the experiment's default
    /// radius; the reported runs come from [`Options::runs_at`] once the radii are chosen.
    pub fn runs(&self) -> Vec<Run> {
        let default = self.hyper().eps;
        self.plan(1..=self.seeds as u64, |method| {
            if method.uses_eps() && !self.eps.is_empty() {
                self.eps.clone()
            } else {
                vec![default]
            }
        })
    }

    /// `--eps auto`'s selection runs: every method with a radius, at every radius of the grid, with
    /// each selection seed; empty without `--eps auto`.
    pub fn selection_runs(&self) -> Vec<Run> {
        let Some(selection) = &self.selection else {
            return Vec::new();
        };
        let seeds = SELECTION_SEED_BASE + 1..=SELECTION_SEED_BASE + selection.seeds as u64;
        self.plan(seeds, |method| {
            if method.uses_eps() {
                selection.grid.clone()
            } else {
                Vec::new()
            }
        })
    }

    /// The reported runs at the chosen radii (`(method, eps)`; a method without a radius runs at the
    /// experiment's default), with the seeds 1..=`seeds`.
    pub fn runs_at(&self, chosen: &[(Method, f64)]) -> Vec<Run> {
        let default = self.hyper().eps;
        self.plan(1..=self.seeds as u64, |method| {
            let eps = chosen.iter().find(|(m, _)| *m == method);
            vec![eps.map_or(default, |(_, e)| *e)]
        })
    }

    /// Each method in order, at each of `radii(method)`, with each of `seeds`.
    fn plan(
        &self,
        seeds: std::ops::RangeInclusive<u64>,
        radii: impl Fn(Method) -> Vec<f64>,
    ) -> Vec<Run> {
        let mut runs = Vec::new();
        for &method in &self.methods {
            for eps in radii(method) {
                for seed in seeds.clone() {
                    runs.push(Run { method, eps, seed });
                }
            }
        }
        runs
    }
}

/// Hyper-parameters of the methods for one experiment.
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    /// FGM / PGD radius, gradient-penalty weight, VAT radius, FreeLB's projection radius.
    pub eps: f64,
    /// Noise standard deviation per coordinate.
    pub sigma: f64,
    pub lr: f64,
    pub batch: usize,
    /// Examples per forward pass: a batch larger than this is split into micro-batches whose steps
    /// are averaged (equal weights) before the update. It bounds memory: double backward through
    /// MiniLM keeps about 2 MB per token per layer.
    pub micro_batch: usize,
    /// Robust-accuracy attack radius (L-infinity), MNIST only; the L2 attack uses `eps`, the
    /// training radius.
    pub attack_eps: f64,
    /// Gradient penalty's weight is `eps * gp_scale`.
    pub gp_scale: f64,
    /// Text: perturb the word-embedding matrix (the rows the batch looks up, one norm for the
    /// batch), as the seeds do, instead of each sentence's embedding output.
    pub matrix_target: bool,
    /// FGM's objective: clean + adversarial, or the adversarial loss alone (the seeds').
    pub fgm_objective: Objective,
    /// Gradient penalty's norm: `L2` (the dual of FGM's normalised step), or `Raw` (`||g||^2 / 2`,
    /// the seeds').
    pub gp_norm: StepNorm,
}

/// The settings the bundled experiments share: per-example L2 steps on each sentence's embedding
/// output (or each image), FGM on clean + adversarial, and gradient penalty `(eps / 2) ||g||`, the
/// weight that matches that FGM under Adam (book, "FGM and gradient penalty", "Matching the
/// weights"). Runs before 2026-12-02 used `eps ||g||` (`--gp-scale 1`), twice FGM's weight.
const PER_EXAMPLE: Hyper = Hyper {
    eps: 0.0,
    sigma: 0.0,
    lr: 0.0,
    batch: 0,
    micro_batch: 0,
    attack_eps: 0.0,
    gp_scale: 0.5,
    matrix_target: false,
    fgm_objective: Objective::CleanPlusAdversarial,
    gp_norm: StepNorm::L2(Scope::PerExample),
};

/// The seeds' FGM and gradient penalty: one step on the whole embedding matrix, FGM on the adversarial
/// loss alone, gradient penalty `L + eps ||g||^2` of the matrix gradient (`Raw` norm, weight
/// `2 eps`, so `eps = 0.5` is the seeds' `0.5 * 1 * ||g||^2`), at the seeds' radius 0.5.
const SEEDS_FORM: Hyper = Hyper {
    eps: 0.5,
    sigma: 0.0,
    lr: 0.0,
    batch: 0,
    micro_batch: 0,
    attack_eps: 0.0,
    gp_scale: 2.0,
    matrix_target: true,
    fgm_objective: Objective::AdversarialOnly,
    gp_norm: StepNorm::Raw,
};

impl Hyper {
    /// These settings with FGM and gradient penalty in the seeds' form: one step on the whole
    /// embedding matrix at the seeds' radius 0.5, FGM on the adversarial loss alone, and gradient
    /// penalty `L + eps ||g||^2` of the matrix gradient (`Raw` norm at weight `2 eps`). The
    /// optimiser, the batch and noise stay.
    pub fn seeds_form(self) -> Hyper {
        Hyper {
            sigma: self.sigma,
            lr: self.lr,
            batch: self.batch,
            micro_batch: self.micro_batch,
            attack_eps: self.attack_eps,
            ..SEEDS_FORM
        }
    }
}

impl Experiment {
    /// [`Experiment::hyper`], in the seeds' form ([`Hyper::seeds_form`]) when `seeds_form`.
    pub fn preset(self, seeds_form: bool) -> Hyper {
        if seeds_form {
            self.hyper().seeds_form()
        } else {
            self.hyper()
        }
    }

    /// The hyper-parameters used for every method of this experiment.
    pub fn hyper(self) -> Hyper {
        match self {
            // Per-sentence L2 radius: a headline's word embeddings have norm about 1 at init (0.02 x
            // sqrt(128) per token, about 20 tokens); 0.5 stopped every gradient-based method learning.
            // 0.03: the best FGM dev accuracy of the sweep over 0.001..0.03 (book, "Experiments").
            Self::Thucnews => Hyper {
                eps: 0.03,
                sigma: 0.01,
                lr: 1e-3,
                batch: 64,
                micro_batch: 64,
                ..PER_EXAMPLE
            },
            // Per-image L2 radius; an MNIST image has L2 norm about 9.
            Self::Mnist => Hyper {
                eps: 1.0,
                sigma: 0.1,
                lr: 1e-3,
                batch: 64,
                micro_batch: 64,
                attack_eps: 0.1,
                ..PER_EXAMPLE
            },
            // MiniLM's word embeddings have norm about 1.1 per token, a snippet about 25 tokens (norm
            // about 5). At a per-snippet radius of 0.5 FGM learned almost nothing in the epoch (dev
            // 58%); 0.01 had the best FGM dev accuracy of the sweep over 0.01..0.1 (book,
            // "Experiments"). A fine-tuning rate as for BERT, at its upper end for one short epoch.
            Self::RottenTomatoes => Hyper {
                eps: 0.01,
                sigma: 0.01,
                lr: 5e-5,
                batch: 32,
                micro_batch: 8,
                ..PER_EXAMPLE
            },
            // The seeds' CLUE settings: FGM `0.5 g / ||g||` on the whole embedding matrix, training
            // on the adversarial loss only; gradient penalty `L + 0.5 * 1 * ||g||^2` with g the
            // matrix gradient (weight eps * gp_scale = 1); Adam 2e-5. Batch 32 and the micro-batch
            // of 8 (memory of double backward through BERT-base) are this crate's choices.
            Self::Clue => Hyper {
                sigma: 0.01,
                lr: 2e-5,
                batch: 32,
                micro_batch: 8,
                ..SEEDS_FORM
            },
        }
    }
}

/// Mixes a seed and an epoch into one seed.
fn mix(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (epoch as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

impl Method {
    /// The library's method for this name at the experiment's settings: the runner steps every
    /// method through `advtrain::Method`, as a user's loop would.
    pub fn build(self, hyper: &Hyper) -> Result<Box<dyn TrainingMethod>> {
        // The matrix target is one point for the whole batch: one norm.
        let norm = StepNorm::L2(if hyper.matrix_target {
            Scope::PerBatch
        } else {
            Scope::PerExample
        });
        Ok(match self {
            Method::Baseline | Method::SpectralNorm => Box::new(Plain),
            Method::Noise => Box::new(Noise::Gaussian { sigma: hyper.sigma }),
            Method::Laplacian => {
                Box::new(Laplacian::new(hyper.sigma)?.with_method(CurvatureMethod::Taylor)?)
            }
            Method::Fgm => Box::new(
                Fgm::new(hyper.eps)?
                    .with_norm(norm)
                    .with_objective(hyper.fgm_objective),
            ),
            Method::GradientPenalty => {
                Box::new(GradientPenalty::new(hyper.eps * hyper.gp_scale)?.with_norm(hyper.gp_norm))
            }
            Method::Pgd => Box::new(Pgd::new(hyper.eps, hyper.eps / 2.0, 3)?.with_norm(norm)),
            Method::FreeLb => Box::new(FreeLb::new(hyper.eps / 3.0, 3)?.with_max_norm(hyper.eps)?),
            Method::Vat => Box::new(Vat::new(hyper.eps)?),
        })
    }
}

/// One step of `method` on a batch: the model's logits and the cross-entropy on them, and the same
/// model on a jet of the point (for the Laplacian's Taylor mode).
fn method_step<G, J>(
    method: &mut dyn TrainingMethod,
    target: &Target,
    (logits, jet_logits): (&G, &J),
    labels: &Tensor,
    rng: &mut Rng,
) -> Result<Step>
where
    G: Fn(&Tensor) -> candle_core::Result<Tensor>,
    J: Fn(&Jet) -> candle_core::Result<Jet>,
{
    let task = |z: &Tensor| advtrain::fused::cross_entropy(z, labels);
    let jet = |x: &Jet| jet_logits(x)?.cross_entropy(labels);
    method.step(
        &Batch::with_outputs(target, logits, &task).with_jet(&jet),
        rng,
    )
}

/// A task the runner trains: a model and its data.
trait Task {
    fn train_len(&self) -> usize;
    fn set_train(&self, train: bool);
    fn named_vars(&self) -> Vec<(String, candle_core::Var)>;
    fn step(&self, method: &mut dyn TrainingMethod, batch: &[usize], rng: &mut Rng)
    -> Result<Step>;
    /// Accuracy on dev (`false`) or test (`true`).
    fn accuracy(&self, test: bool) -> Result<Evaluation>;
    /// Test accuracy under attack, where the task measures it.
    fn robust_accuracy(&self, hyper: &Hyper) -> Result<Option<Robust>>;
}

struct TextTask {
    model: BertClassifier,
    /// Perturb the embedding matrix's rows instead of the embedding output.
    matrix_target: bool,
    train: (Vec<Vec<u32>>, Vec<u32>),
    dev: (Vec<Vec<u32>>, Vec<u32>),
    test: (Vec<Vec<u32>>, Vec<u32>),
    pad_id: u32,
    device: Device,
}

impl TextTask {
    fn batch(
        &self,
        data: &(Vec<Vec<u32>>, Vec<u32>),
        rows: &[usize],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let seqs: Vec<&[u32]> = rows.iter().map(|&i| data.0[i].as_slice()).collect();
        let (ids, mask) = pad_batch(&seqs, self.pad_id, DType::F32, &self.device)?;
        let labels: Vec<u32> = rows.iter().map(|&i| data.1[i]).collect();
        Ok((ids, mask, Tensor::new(labels, &self.device)?))
    }
}

fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(1)?;
    Ok(predicted
        .eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}

/// Accuracy on a data set, and how many distinct classes the model predicted on it.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    correct: usize,
    total: usize,
    predicted: std::collections::BTreeSet<u32>,
    classes: usize,
}

impl Evaluation {
    /// Adds a chunk's logits and labels.
    fn add(&mut self, logits: &Tensor, labels: &Tensor) -> Result<()> {
        self.correct += count_correct(logits, labels)?;
        self.total += labels.dim(0)?;
        self.classes = logits.dim(1)?;
        self.predicted
            .extend(logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?);
        Ok(())
    }

    /// The fraction correct (0 for an empty set).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// The number of distinct predicted classes.
    pub fn predicted_classes(&self) -> usize {
        self.predicted.len()
    }

    /// The number of classes the model chooses from.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

impl Task for TextTask {
    fn train_len(&self) -> usize {
        self.train.1.len()
    }
    fn set_train(&self, train: bool) {
        self.model.mode.set_train(train);
    }
    fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        self.model.params().named_vars()
    }
    fn step(&self, method: &mut dyn TrainingMethod, rows: &[usize], rng: &mut Rng) -> Result<Step> {
        let (ids, mask, labels) = self.batch(&self.train, rows)?;
        if self.matrix_target {
            // The rows of the matrix the batch looks up: the matrix target's step, without a copy
            // of the matrix per perturbed pass.
            let (target, lookup) = Target::embedding_rows(self.model.word_embeddings(), &ids)?;
            let logits = |rows: &Tensor| -> candle_core::Result<Tensor> {
                Ok(self
                    .model
                    .logits_from_embeddings(&lookup.embed(rows)?, &mask)?)
            };
            let jet = |rows: &Jet| -> candle_core::Result<Jet> {
                let e = rows.map_linear(|t| lookup.embed(t))?;
                Ok(self.model.logits_from_embeddings_jet(&e, &mask)?)
            };
            return method_step(method, &target, (&logits, &jet), &labels, rng);
        }
        let target = Target::embedding_output(&self.model.embed(&ids)?, Some(&mask))?;
        let logits = |e: &Tensor| -> candle_core::Result<Tensor> {
            Ok(self.model.logits_from_embeddings(e, &mask)?)
        };
        let jet = |e: &Jet| -> candle_core::Result<Jet> {
            Ok(self.model.logits_from_embeddings_jet(e, &mask)?)
        };
        method_step(method, &target, (&logits, &jet), &labels, rng)
    }
    fn accuracy(&self, test: bool) -> Result<Evaluation> {
        let data = if test { &self.test } else { &self.dev };
        let rows: Vec<usize> = (0..data.1.len()).collect();
        let mut evaluation = Evaluation::default();
        for chunk in rows.chunks(256) {
            let (ids, mask, labels) = self.batch(data, chunk)?;
            let logits = self
                .model
                .logits_from_embeddings(&self.model.embed(&ids)?.detach(), &mask)?;
            evaluation.add(&logits, &labels)?;
        }
        Ok(evaluation)
    }
    fn robust_accuracy(&self, _hyper: &Hyper) -> Result<Option<Robust>> {
        Ok(None)
    }
}

struct ImageTask {
    model: Cnn,
    data: Split<ImageDataset>,
    device: Device,
}

impl ImageTask {
    fn batch(&self, data: &ImageDataset, rows: &[usize]) -> Result<(Tensor, Tensor)> {
        let part = data.select(rows);
        Ok((
            Tensor::from_vec(part.pixels, (rows.len(), 784), &self.device)?,
            Tensor::new(part.labels, &self.device)?,
        ))
    }
}

impl Task for ImageTask {
    fn train_len(&self) -> usize {
        self.data.train.len()
    }
    fn set_train(&self, train: bool) {
        self.model.mode.set_train(train);
    }
    fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        self.model.params().named_vars()
    }
    fn step(&self, method: &mut dyn TrainingMethod, rows: &[usize], rng: &mut Rng) -> Result<Step> {
        let (x, labels) = self.batch(&self.data.train, rows)?;
        let target = Target::input(&x)?;
        let logits = |x: &Tensor| -> candle_core::Result<Tensor> { Ok(self.model.logits(x)?) };
        let jet = |x: &Jet| -> candle_core::Result<Jet> { Ok(self.model.logits_jet(x)?) };
        method_step(method, &target, (&logits, &jet), &labels, rng)
    }
    fn accuracy(&self, test: bool) -> Result<Evaluation> {
        let data = if test {
            &self.data.test
        } else {
            &self.data.dev
        };
        let rows: Vec<usize> = (0..data.len()).collect();
        let mut evaluation = Evaluation::default();
        for chunk in rows.chunks(500) {
            let (x, labels) = self.batch(data, chunk)?;
            evaluation.add(&self.model.logits(&x)?, &labels)?;
        }
        Ok(evaluation)
    }
    fn robust_accuracy(&self, hyper: &Hyper) -> Result<Option<Robust>> {
        let data = &self.data.test;
        let rows: Vec<usize> = (0..data.len()).collect();
        let mut correct = [0usize; 3];
        let mut rng = Rng::new(0);
        // Every attack keeps the pixels in [0, 1]. FGSM and PGD-10 in the L-infinity ball of
        // attack_eps; PGD-10 in the L2 ball of the training radius eps, per image, the threat model
        // the methods trained against.
        let attacks = [
            Pgd::new(hyper.attack_eps, hyper.attack_eps, 1)?.with_norm(StepNorm::Sign),
            Pgd::new(hyper.attack_eps, hyper.attack_eps / 4.0, 10)?.with_norm(StepNorm::Sign),
            Pgd::new(hyper.eps, hyper.eps / 4.0, 10)?.with_norm(StepNorm::L2(Scope::PerExample)),
        ];
        let attacks = attacks
            .into_iter()
            .map(|attack| attack.with_range(0.0, 1.0))
            .collect::<Result<Vec<_>>>()?;
        for chunk in rows.chunks(250) {
            let (x, labels) = self.batch(data, chunk)?;
            let target = Target::input(&x)?;
            let loss = |x: &Tensor| advtrain::fused::cross_entropy(&self.model.logits(x)?, &labels);
            for (attack, correct) in attacks.iter().zip(correct.iter_mut()) {
                // A confident model can have an exactly zero gradient on a chunk: no perturbation.
                let batch = Batch::new(&target, &loss).with_check(GradientCheck::Finite);
                let (delta, _) = attack.attack(&batch, &mut rng)?;
                let adversarial = (&x + delta.detach())?;
                *correct += count_correct(&self.model.logits(&adversarial)?, &labels)?;
            }
        }
        let n = rows.len().max(1) as f64;
        Ok(Some(Robust {
            fgsm: correct[0] as f64 / n,
            pgd: correct[1] as f64 / n,
            pgd_l2: correct[2] as f64 / n,
        }))
    }
}

/// Test accuracy under attack, pixels kept in [0, 1]: FGSM and PGD-10 in the L-infinity ball of
/// `attack_eps`, and PGD-10 in the per-image L2 ball of the training radius.
#[derive(Clone, Copy, Debug)]
pub struct Robust {
    pub fgsm: f64,
    pub pgd: f64,
    pub pgd_l2: f64,
}

/// The prepared data of an experiment, shared by its runs.
pub enum Prepared {
    Text {
        train: (Vec<Vec<u32>>, Vec<u32>),
        dev: (Vec<Vec<u32>>, Vec<u32>),
        test: (Vec<Vec<u32>>, Vec<u32>),
        pad_id: u32,
        config: BertConfig,
        head: Head,
        /// The Hugging Face model directory to start from (MiniLM), or `None` to train from scratch.
        pretrained: Option<PathBuf>,
    },
    Image(Split<ImageDataset>),
}

impl Prepared {
    /// A hash of the examples themselves (ids or pixels, and labels, of every split): part of a
    /// run's fingerprint, so that a data file edited in place under the same name is not resumed.
    /// 64-bit FNV-1a over 32-bit words, written out here so that it stays the same across Rust
    /// versions (std's `DefaultHasher` promises no such thing).
    pub fn content_hash(&self) -> u64 {
        let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
        match self {
            Prepared::Text {
                train,
                dev,
                test,
                pad_id,
                ..
            } => {
                for (ids, labels) in [train, dev, test] {
                    for row in ids {
                        hash.words(row.len() as u32, row);
                    }
                    hash.words(labels.len() as u32, labels);
                }
                hash.words(*pad_id, &[]);
            }
            Prepared::Image(split) => {
                for part in [&split.train, &split.dev, &split.test] {
                    hash.words(part.labels.len() as u32, &part.labels);
                    for p in &part.pixels {
                        hash.word(p.to_bits());
                    }
                }
            }
        }
        hash.0
    }
}

/// The state of a 64-bit FNV-1a hash over 32-bit words.
struct Fnv(u64);

impl Fnv {
    fn word(&mut self, word: u32) {
        self.0 = (self.0 ^ u64::from(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// A length (or any leading word), then the words.
    fn words(&mut self, first: u32, words: &[u32]) {
        self.word(first);
        words.iter().for_each(|&w| self.word(w));
    }
}

fn tokenized(t: &TextTokenizer, d: &TextDataset) -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
    Ok((t.encode(&d.texts)?, d.labels.clone()))
}

impl Experiment {
    /// The pretrained model a text experiment starts from unless `--model` is given: MiniLM for
    /// Rotten Tomatoes, none for THUCNews (trained from scratch) and CLUE (which needs `--model`).
    fn default_model(self, data: &Path) -> Option<PathBuf> {
        (self == Self::RottenTomatoes).then(|| data.join("models/all-MiniLM-L6-v2"))
    }

    /// Dev and test fractions of a single text file.
    fn split_fractions(self) -> (f64, f64) {
        match self {
            // A fifth each for dev and test: fine-tuning cost grows with the training set,
            // evaluation is cheap, and a 500-snippet test set halves the sampling error of a
            // 250-snippet one.
            Self::RottenTomatoes => (0.2, 0.2),
            _ => (0.1, 0.1),
        }
    }

    /// How the head pools: the first token for BERT-base on CLUE (the seeds' classifier), the
    /// masked mean otherwise (as sentence-transformers trained MiniLM).
    fn pooling(self) -> Pooling {
        match self {
            Self::Clue => Pooling::Cls,
            _ => Pooling::Mean,
        }
    }
}

/// Builds a tokenizer from a `tokenizer.json` (by its extension) or a WordPiece vocabulary.
fn load_tokenizer(file: &Path, max_len: usize) -> Result<TextTokenizer> {
    if file.extension().is_some_and(|e| e == "json") {
        TextTokenizer::from_json(file, max_len)
    } else {
        TextTokenizer::wordpiece(file, max_len)
    }
}

/// The tokenizer of a model directory: its tokenizer.json, else its vocab.txt.
fn model_tokenizer(dir: &Path) -> Result<PathBuf> {
    ["tokenizer.json", "vocab.txt"]
        .iter()
        .map(|name| dir.join(name))
        .find(|file| file.is_file())
        .ok_or_else(|| {
            Error::data(
                dir.display(),
                None,
                "the model directory has neither tokenizer.json nor vocab.txt",
                "add the model's tokenizer, or pass one with --tokenizer FILE",
            )
        })
}

/// The text experiments: the model (from scratch, the preset's or `--model`), the tokenizer, the
/// texts (bundled, one file split by seed, or separate files), the maximum length, tokenised.
fn prepare_text(options: &Options, size: usize) -> Result<Prepared> {
    let experiment = options.experiment;
    let data = &options.data_dir;
    let model_dir = options
        .model
        .clone()
        .or_else(|| experiment.default_model(data));
    let config = match &model_dir {
        None if experiment == Experiment::Clue => {
            return Err(Error::InvalidArgument {
                name: "--model",
                reason: "the clue experiment fine-tunes a pretrained Chinese BERT".into(),
                fix: "pass --model DIR, a Hugging Face directory (config.json, model.safetensors, \
                      vocab.txt or tokenizer.json), e.g. bert-base-chinese"
                    .into(),
            });
        }
        None => None,
        Some(dir) => {
            let weights = dir.join("model.safetensors");
            if !weights.is_file() {
                let fix = if options.model.is_none() {
                    "run `bash scripts/setup.sh`, which downloads it and checks its sha256"
                } else {
                    "pass a Hugging Face model directory with config.json and model.safetensors"
                };
                return Err(Error::data(
                    weights.display(),
                    None,
                    "missing from the model directory",
                    fix,
                ));
            }
            Some(BertConfig::from_file(&dir.join("config.json"))?)
        }
    };
    let tokenizer_file = match (&options.tokenizer, &model_dir) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => model_tokenizer(dir)?,
        (None, None) => data.join("bert-base-chinese-vocab.txt"),
    };
    let (dev_fraction, test_fraction) = experiment.split_fractions();
    let (parts, bundled_len) = match &options.texts {
        // 99.9% of the headlines have at most 30 characters: 32 tokens with [CLS] and [SEP].
        None if experiment == Experiment::Thucnews => {
            let all = drawn(
                &thucnews(&data.join("thucnews_10w.tsv.xz"))?,
                size,
                0,
                options,
            );
            (split(&all, dev_fraction, test_fraction, 0)?, Some(32))
        }
        // 99% of the snippets have at most 40 words.
        None if experiment == Experiment::RottenTomatoes => {
            let path = data.join("rotten_tomatoes_corpus_full.csv.bz2");
            let all = drawn(&rotten_tomatoes(&path)?, size, 0, options);
            (split(&all, dev_fraction, test_fraction, 0)?, Some(64))
        }
        None => {
            return Err(Error::InvalidArgument {
                name: "--train",
                reason: format!("the {} experiment has no bundled texts", experiment.name()),
                fix:
                    "pass --train FILE --dev FILE [--test FILE] (CLUE's train.json and dev.json), \
                      or one file with --texts"
                        .into(),
            });
        }
        Some(TextSource::One(file)) => {
            let all = drawn(&file.load(None)?, size, 0, options);
            (split(&all, dev_fraction, test_fraction, 0)?, None)
        }
        Some(TextSource::Files { train, dev, test }) => {
            let train = train.load(None)?;
            let dev = dev.load(Some(&train.classes))?;
            let test = match test {
                Some(file) => file.load(Some(&train.classes))?,
                None => {
                    println!("no --test file: the test columns report the dev set");
                    dev.clone()
                }
            };
            let parts = Split {
                train: drawn(&train, size, 0, options),
                dev,
                test,
            };
            (parts, None)
        }
    };
    // A pretrained model has its positions; from scratch, 512 as BERT.
    let limit = config.as_ref().map_or(512, BertConfig::max_tokens);
    // Without a length given, it is read off the training texts' ids at the model's limit, which
    // the training set then keeps where they are short enough (`encode_from_longer`).
    let (max_len, train_at_limit) = match (options.max_len, bundled_len) {
        (Some(n), _) | (None, Some(n)) => (n, None),
        (None, None) => {
            let ids = load_tokenizer(&tokenizer_file, limit)?.encode(&parts.train.texts)?;
            (length_percentile(&ids, limit), Some(ids))
        }
    };
    if max_len > limit {
        return Err(Error::InvalidArgument {
            name: "--max-len",
            reason: format!("{max_len} tokens; the model has {limit} positions"),
            fix: format!("pass --max-len {limit} or less"),
        });
    }
    let tokenizer = load_tokenizer(&tokenizer_file, max_len)?;
    if let Some(config) = &config
        && tokenizer.vocab_size() > config.vocab_size
    {
        return Err(Error::data(
            tokenizer_file.display(),
            None,
            format!(
                "the tokenizer has {} tokens; the model's embedding has {} rows (vocab_size in \
                 its config.json)",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
            "use the tokenizer that came with the model",
        ));
    }
    let config = config.unwrap_or_else(|| BertConfig::small(tokenizer.vocab_size(), max_len));
    Ok(Prepared::Text {
        train: match train_at_limit {
            Some(ids) => (
                tokenizer.encode_from_longer(&parts.train.texts, ids)?,
                parts.train.labels.clone(),
            ),
            None => tokenized(&tokenizer, &parts.train)?,
        },
        dev: tokenized(&tokenizer, &parts.dev)?,
        test: tokenized(&tokenizer, &parts.test)?,
        pad_id: tokenizer.pad_id(),
        config,
        head: Head {
            classes: parts.train.classes.len(),
            pooling: experiment.pooling(),
        },
        pretrained: model_dir,
    })
}

/// [`subsample`], saying how many examples it keeps when it leaves some out, and why.
fn drawn<T: Examples>(all: &T, size: usize, seed: u64, options: &Options) -> T {
    if size < all.len() {
        let why = match (options.subset, options.quick) {
            (Some(_), _) => "--subset",
            (None, true) => "--quick's subset; --subset N to change it",
            (None, false) => "the experiment's default subset; --subset N to change it",
        };
        println!("using {size} of {} examples ({why})", all.len());
    }
    subsample(all, size, seed)
}

/// Loads, splits (seed 0, the same for every run), subsamples in quick mode, and tokenises.
pub fn prepare(options: &Options) -> Result<Prepared> {
    let data = &options.data_dir;
    // The experiment's own subset for its bundled data; all of a user's own data unless --quick.
    let own_data = options.images.is_some() || options.texts.is_some();
    let size = options.subset.unwrap_or(if own_data && !options.quick {
        usize::MAX
    } else {
        options.experiment.default_subset(options.quick)
    });
    advtrain::error::check_count("--subset", size)?;
    if let Some(max_len) = options.max_len
        && max_len < 3
    {
        return Err(Error::InvalidArgument {
            name: "--max-len",
            reason: format!("{max_len} tokens leave no room for a token between [CLS] and [SEP]"),
            fix: "pass --max-len 3 or more".into(),
        });
    }
    match options.experiment {
        Experiment::Thucnews | Experiment::RottenTomatoes | Experiment::Clue => {
            prepare_text(options, size)
        }
        Experiment::Mnist => {
            let all = match &options.images {
                None => mnist_csv(&data.join("mnist_5k.csv.gz"))?,
                Some((images, labels)) => {
                    let all = idx_images(images, labels)?;
                    // The CNN takes 28 x 28 images; its outputs are the data's classes.
                    if (all.height, all.width) != (Cnn::SIDE, Cnn::SIDE) {
                        return Err(Error::data(
                            images.display(),
                            None,
                            format!(
                                "holds {} x {} images; the mnist experiment's CNN takes {side} x {side}",
                                all.height,
                                all.width,
                                side = Cnn::SIDE
                            ),
                            "pass 28 x 28 images (MNIST, Fashion-MNIST, KMNIST)",
                        ));
                    }
                    let mut seen = all.labels.clone();
                    seen.sort_unstable();
                    seen.dedup();
                    if seen.len() < 2 {
                        return Err(Error::data(
                            labels.display(),
                            None,
                            format!("every image has the label {}", seen.first().unwrap_or(&0)),
                            "a classifier needs two labels or more",
                        ));
                    }
                    all
                }
            };
            let all = drawn(&all, size, 0, options);
            Ok(Prepared::Image(split(&all, 0.1, 0.2, 0)?))
        }
    }
}

/// Draws the power iterations' starting vectors of a spectrally normalised model.
fn spectral_rng(seed: u64) -> Rng {
    Rng::new(seed ^ 0x5eed)
}

fn build_task(
    prepared: &Prepared,
    method: Method,
    hyper: &Hyper,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Task>> {
    let spectral = method == Method::SpectralNorm;
    Ok(match prepared {
        Prepared::Text {
            train,
            dev,
            test,
            pad_id,
            config,
            head,
            pretrained,
        } => Box::new(TextTask {
            model: {
                let model = BertClassifier::new(config.clone(), *head, seed, DType::F32, device)?;
                if let Some(dir) = pretrained {
                    model.load_weights(&dir.join("model.safetensors"))?;
                }
                match spectral {
                    true => model.spectrally_normalised(&mut spectral_rng(seed))?,
                    false => model,
                }
            },
            matrix_target: hyper.matrix_target,
            train: train.clone(),
            dev: dev.clone(),
            test: test.clone(),
            pad_id: *pad_id,
            device: device.clone(),
        }),
        Prepared::Image(data) => Box::new(ImageTask {
            model: {
                let model = Cnn::new(seed, data.train.classes, DType::F32, device)?;
                match spectral {
                    true => model.spectrally_normalised(&mut spectral_rng(seed))?,
                    false => model,
                }
            },
            data: data.clone(),
            device: device.clone(),
        }),
    })
}

/// The folder of one run's checkpoints.
pub fn run_dir(options: &Options, run: &Run) -> PathBuf {
    let name = if run.method.uses_eps() {
        format!("{}-eps{}-seed{}", run.method.name(), run.eps, run.seed)
    } else {
        format!("{}-seed{}", run.method.name(), run.seed)
    };
    options.out_dir.join("checkpoints").join(name)
}

fn checkpoint_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch-{epoch}.safetensors"))
}

/// Trains one method with one seed for `options.epochs` epochs, resuming from the newest checkpoint
/// in its folder; returns a row per epoch (rows of resumed epochs come from the rows file saved
/// beside the checkpoints).
pub fn run_one(
    options: &Options,
    prepared: &Prepared,
    run: Run,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<EpochRow>> {
    advtrain::error::check_positive("--eps", run.eps)?;
    let Run { method, seed, .. } = run;
    // The GPU when the build has CUDA and one is present (cli::run says which), the CPU otherwise.
    let (device, _) = advtrain::device::select();
    let hyper = Hyper {
        eps: run.eps,
        ..options.hyper()
    };
    let task = build_task(prepared, method, &hyper, seed, &device)?;
    let mut adam = Adam::new(task.named_vars(), hyper.lr, 0.0)?;
    let dir = run_dir(options, &run);
    // Checkpoints of another configuration (other data, subset or hyper-parameters) are not resumed.
    // A method without a radius ignores eps, so eps is left out of its fingerprint: changing the
    // radius of a sweep keeps the baseline's checkpoints.
    let fingerprint_hyper = Hyper {
        eps: if method.uses_eps() { hyper.eps } else { 0.0 },
        ..hyper
    };
    let fingerprint = |examples: String| {
        format!(
            "{} quick={} train={}{examples} data={:?} {:?} model={:?} tokenizer={:?} max_len={:?} \
             {fingerprint_hyper:?}\n",
            options.experiment.name(),
            options.quick,
            task.train_len(),
            options.images,
            options.texts,
            options.model,
            options.tokenizer,
            options.max_len,
        )
    };
    // Folders written before the examples' hash joined the fingerprint carry the rest of it alone:
    // they resume, and take the full fingerprint from now on.
    let (current, before_hash) = (
        fingerprint(format!(" examples={:016x}", prepared.content_hash())),
        fingerprint(String::new()),
    );
    let config_file = dir.join("config.txt");
    let found = std::fs::read_to_string(&config_file).ok();
    if found.as_deref() == Some(before_hash.as_str()) {
        std::fs::write(&config_file, &current).map_err(|e| io_error(&config_file, e))?;
    } else if found.as_deref() != Some(current.as_str()) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        std::fs::write(&config_file, &current).map_err(|e| io_error(&config_file, e))?;
    }
    let rows_file = dir.join("rows.csv");
    let mut rows = super::rows::read_rows(&rows_file).unwrap_or_default();
    let mut start = 0;
    for epoch in (1..=options.epochs).rev() {
        let path = checkpoint_path(&dir, epoch);
        if path.exists() && rows.len() >= epoch {
            start = checkpoint::load(&path, &mut adam)?;
            break;
        }
    }
    rows.truncate(start);
    let mut trainer = method.build(&hyper)?;
    let batches_per_epoch = task.train_len().div_ceil(hyper.batch);
    progress.set_length((options.epochs * batches_per_epoch) as u64);
    progress.set_position((start * batches_per_epoch) as u64);
    for epoch in start + 1..=options.epochs {
        let started = Instant::now();
        let mut rng = Rng::new(mix(seed, epoch));
        let order = rng.permutation(task.train_len());
        let (mut total, mut count, mut passes) = (0.0, 0usize, Passes::default());
        task.set_train(true);
        for batch in order.chunks(hyper.batch) {
            let micro: Vec<&[usize]> = batch.chunks(hyper.micro_batch).collect();
            let mut accumulator = Accumulator::new(micro.len())?;
            let mut accumulated = None;
            for part in micro {
                let step = task.step(trainer.as_mut(), part, &mut rng)?;
                passes = step.passes;
                accumulated = accumulator.add(step)?;
            }
            let step = accumulated.expect("the accumulator completes on the last micro-batch");
            let loss = step.clean_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: format!(
                        "the training loss of {} (seed {seed}, epoch {epoch})",
                        method.name()
                    ),
                });
            }
            adam.step(&step.grads)?;
            total += loss * batch.len() as f64;
            count += batch.len();
            progress.inc(1);
            progress.set_message(format!(
                "{} seed {seed} loss {:.4}",
                method.name(),
                total / count as f64
            ));
        }
        task.set_train(false);
        let robust = if epoch == options.epochs {
            task.robust_accuracy(&hyper)?
        } else {
            None
        };
        let test = task.accuracy(true)?;
        let row = EpochRow {
            experiment: options.experiment.name().into(),
            method: method.name().into(),
            eps: run.eps,
            seed,
            epoch,
            train_loss: total / count.max(1) as f64,
            dev_accuracy: task.accuracy(false)?.accuracy(),
            test_accuracy: test.accuracy(),
            fgsm_accuracy: robust.map_or(f64::NAN, |r| r.fgsm),
            pgd_accuracy: robust.map_or(f64::NAN, |r| r.pgd),
            pgd_l2_accuracy: robust.map_or(f64::NAN, |r| r.pgd_l2),
            passes_forward: passes.forward,
            passes_backward: passes.backward,
            seconds: started.elapsed().as_secs_f64(),
            predicted_classes: test.predicted_classes() as f64,
            classes: test.classes() as f64,
        };
        if row.collapsed() && epoch == options.epochs {
            let why = if row.predicted_classes == 1.0 {
                "it predicts one class for every test example"
            } else {
                "its training loss stayed at chance level, ln C"
            };
            let warning = format!(
                "warning: {} seed {seed} collapsed: {why} (training loss {:.4}, ln C = {:.4}); a \
                 smaller --eps or learning rate may help",
                method.name(),
                row.train_loss,
                row.classes.ln()
            );
            if progress.is_hidden() {
                println!("{warning}");
            } else {
                progress.println(warning);
            }
        }
        if options.verbose {
            let line = format!(
                "{:<16}{} seed {seed} epoch {epoch}: loss {:.4}, dev {:.4}, test {:.4}{} ({:.0} s)",
                method.name(),
                if method.uses_eps() {
                    format!(" eps {}", run.eps)
                } else {
                    String::new()
                },
                row.train_loss,
                row.dev_accuracy,
                row.test_accuracy,
                robust.map_or(String::new(), |r| format!(
                    ", fgsm {:.4}, pgd {:.4}, pgd-l2 {:.4}",
                    r.fgsm, r.pgd, r.pgd_l2
                )),
                row.seconds
            );
            // A hidden bar (no terminal, as in CI) prints nothing: say it on stdout instead.
            if progress.is_hidden() {
                println!("{line}");
            } else {
                progress.println(line);
            }
        }
        rows.push(row);
        checkpoint::save(&checkpoint_path(&dir, epoch), &adam, epoch)?;
        super::rows::write_rows(&rows_file, &rows)?;
        // Only the newest checkpoint is needed to resume (earlier epochs' rows are in the rows
        // file); a pretrained encoder's checkpoint with Adam's moments is about 270 MB.
        for earlier in 1..epoch {
            let old = checkpoint_path(&dir, earlier);
            if old.exists() {
                std::fs::remove_file(&old).map_err(|e| io_error(&old, e))?;
            }
        }
    }
    Ok(rows)
}
