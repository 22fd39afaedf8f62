//! The experiments: does adversarial training help on real data? (`cargo run --release -- experiment`)
//!
//! The models ([`layers`], [`encoder`], [`cnn`]) are always built (the GPU suite and its timings use
//! the encoder); the data, tokenisers, runner and reports need the `experiments` feature (on by
//! default), which brings polars, tokenizers and the compression crates. The library's methods do not
//! depend on anything here; this is the runner the book's "Experiments" chapter reports from.
//!
//! | module | concept |
//! |---|---|
//! | [`data`] | THUCNews, Rotten Tomatoes, MNIST (CSV and IDX) and CLUE JSONL loaders, seeded splits |
//! | [`tokenize`] | WordPiece tokenisation (`tokenizers`), padded batches |
//! | [`layers`] | dense and convolution layers with optional spectral normalisation |
//! | [`encoder`] | the BERT-style text classifier (from scratch, or MiniLM's weights) |
//! | [`cnn`] | the MNIST convolutional network |
//! | [`checkpoint`] | Adam with saveable state; checkpoints to resume a run exactly |
//! | [`run`] | the runner: one method with one seed, epoch by epoch, with checkpoints |
//! | [`rows`] | the results table: a row of metrics per run and epoch, as CSV |
//! | [`report`] | results CSV, summary table, figures |
//! | [`cli`] | the command line: every run of an experiment, then the reports |

pub mod checkpoint;
pub mod cli;
pub mod cnn;
pub mod data;
pub mod encoder;
pub mod layers;
pub mod report;
pub mod rows;
pub mod run;
pub mod tokenize;
