//! The experiments: does adversarial training help on real data? (`cargo run --release -- experiment`)
//!
//! The models are the library's (`advtrain::models`: the BERT-family classifier and the CNN, on the
//! fused ops); this package adds what the library leaves to its users: data loaders, tokenisers, the
//! training loop with checkpoints, reports and the command line, with polars, tokenizers, clap and the
//! compression crates. This is the runner the book's "Experiments" chapter reports from.
//!
//! | module | concept |
//! |---|---|
//! | [`data`] | THUCNews, Rotten Tomatoes, MNIST (CSV and IDX) and CLUE JSONL loaders, seeded splits |
//! | [`tokenize`] | WordPiece tokenisation (`tokenizers`), padded batches |
//! | [`checkpoint`] | Adam with saveable state; checkpoints to resume a run exactly |
//! | [`run`] | the runner: one method with one seed, epoch by epoch, with checkpoints |
//! | [`rows`] | the results table: a row of metrics per run and epoch, as CSV |
//! | [`report`] | results CSV, summary table, figures |
//! | [`cli`] | the command line: every run of an experiment, then the reports |

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod report;
pub mod rows;
pub mod run;
pub mod tokenize;
