//! The experiments' tests, one module per concept (`experiments/src/<concept>.rs`), in one binary.

mod clue;
mod data;
mod encoder;
mod run;
mod tokenize;
