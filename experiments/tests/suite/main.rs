//! The experiments' tests, one module per concept (`experiments/src/<concept>.rs`), in one binary.

mod cnn;
mod data;
mod encoder;
mod run;
mod tokenize;
