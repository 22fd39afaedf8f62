//! The test suite, one module per concept (`src/<concept>.rs` <-> `tests/suite/<concept>.rs`), linked
//! into one binary. `tests/gpu.rs` is the GPU suite's own binary (scripts/build-gpu-suite.sh).
mod ball;
mod device;
mod divergence;
mod dropout;
mod equivalence;
mod error;
mod fgm;
mod free_at;
mod freelb;
mod fused;
mod gradient_penalty;
mod init;
mod jet;
mod laplacian;
mod local_linearity;
mod method;
mod models;
mod noise;
mod norm;
mod ops;
mod pgd;
mod regulariser;
mod rng;
mod second_order;
mod smart;
mod spectral_norm;
mod step;
mod target;
mod target_shift;
mod toy;
mod vat;
mod verify;
mod yopo;

use candle_core::{DType, Tensor};

/// The elements of `t`, flattened, as f64: what the modules' assertions compare.
pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}
