//! The experiments: does adversarial training help on real data? (`cargo run --release -- experiment`)
//!
//! Built only with the `experiments` feature (on by default). The library's methods do not depend on
//! anything here; this is the runner the book's "Experiments" chapter reports from.
//!
//! | module | concept |
//! |---|---|
//! | [`data`] | THUCNews, Rotten Tomatoes, MNIST and CLUE JSONL loaders, seeded splits |

pub mod data;
