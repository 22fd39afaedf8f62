//! # advtrain
//!
//! Adversarial training and smoothness regularisation for [candle](https://github.com/huggingface/candle),
//! as small components you call inside your own training loop, with every equivalence between them
//! checked numerically.
//!
//! | module | concept |
//! |---|---|
//! | [`target`] | what is perturbed: input, embedding output (with padding mask), embedding matrix / weight |
//! | [`noise`] | random noise on inputs, embeddings, weights, labels; the k-sample average |
//! | [`laplacian`] | noise integrated out: `sigma^2/2 tr(H)` by Hutchinson probes |
//! | [`target_shift`] | output smoothness `sum_i lambda_i ||grad f_i||^2`, random-projection estimator |
//! | [`norm`] | step geometry: FGM direction and its dual penalty |
//! | [`fgm`] | FGM / FGSM |
//! | [`gradient_penalty`] | `eps * P(grad_x L)`, exact or by finite differences |
//! | [`spectral_norm`] | spectral normalisation, Lipschitz bound |
//! | [`second_order`] | the guard against silently wrong second-order gradients |
//! | [`ops`] | differentiable layer norm and softmax |
//! | [`rng`], [`init`] | the crate's seeded randomness and initialisation |
//! | [`verify`] | finite-difference checks, relative error, convergence-order fits |
//! | [`toy`], [`equivalence`] | small models, and every equivalence as a runnable check |
//!
//! A method takes a [`Target`] and a loss closure and returns a [`Step`]: the loss and a `GradStore`
//! for your optimiser. Methods that differentiate a gradient need `CANDLE_GRAD_DO_NOT_DETACH=1` in the
//! environment and say so with an error when it is missing ([`second_order`]).
//!
//! ```
//! use advtrain::{Fgm, GradientPenalty, Target};
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Linear, Module, Optimizer, SGD};
//!
//! # fn main() -> advtrain::Result<()> {
//! let device = Device::Cpu;
//! let mut rng = advtrain::Rng::new(0);
//! let params = advtrain::init::SeededVarMap::new(0);
//! let model: Linear = candle_nn::linear(4, 3, params.var_builder(DType::F32, &device))?;
//! let mut opt = SGD::new(params.all_vars(), 0.1)?;
//! let x = rng.normal((8, 4), DType::F32, &device)?;
//! let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &device)?;
//! let loss = |x: &Tensor| candle_nn::loss::cross_entropy(&model.forward(x)?, &y);
//!
//! let fgm = Fgm::new(0.1)?;
//! let step = fgm.step(&Target::input(&x)?, &loss)?; // two forward-backward passes
//! opt.step(&step.grads)?;
//! # if advtrain::second_order::is_enabled() {
//! let penalty = GradientPenalty::new(0.1)?; // needs CANDLE_GRAD_DO_NOT_DETACH=1
//! let step = penalty.step(&Target::input(&x)?, &loss)?;
//! opt.step(&step.grads)?;
//! # }
//! # Ok(())
//! # }
//! ```

// The README's example and every Rust block of the book are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
#[cfg(doctest)]
mod book {
    #[doc = include_str!("../book/src/introduction.md")]
    mod introduction {}
    #[doc = include_str!("../book/src/min_max.md")]
    mod min_max {}
    #[doc = include_str!("../book/src/noise.md")]
    mod noise {}
    #[doc = include_str!("../book/src/target_shift.md")]
    mod target_shift {}
    #[doc = include_str!("../book/src/fgm_and_gradient_penalty.md")]
    mod fgm_and_gradient_penalty {}
    #[doc = include_str!("../book/src/geometry.md")]
    mod geometry {}
    #[doc = include_str!("../book/src/l_constraint.md")]
    mod l_constraint {}
    #[doc = include_str!("../book/src/methods.md")]
    mod methods {}
    #[doc = include_str!("../book/src/experiments.md")]
    mod experiments {}
    #[doc = include_str!("../book/src/gpu.md")]
    mod gpu {}
    #[doc = include_str!("../book/src/fused.md")]
    mod fused {}
}

pub mod ball;
pub mod device;
pub mod dropout;
pub mod equivalence;
pub mod error;
pub mod fgm;
pub mod free_at;
pub mod freelb;
pub mod fused;
pub mod gradient_penalty;
pub mod init;
pub mod laplacian;
pub mod noise;
pub mod norm;
pub mod ops;
pub mod pgd;
pub mod rng;
pub mod second_order;
pub mod smart;
pub mod spectral_norm;
pub mod step;
pub mod target;
pub mod target_shift;
pub mod toy;
pub mod vat;
pub mod verify;
pub mod yopo;

pub use ball::Ball;
pub use dropout::HeldDropout;
pub use error::{Error, Result};
pub use fgm::{Fgm, Objective};
pub use free_at::FreeAt;
pub use freelb::FreeLb;
pub use gradient_penalty::{GradientPenalty, PenaltyMethod};
pub use laplacian::{CurvatureMethod, Laplacian, ProbeKind};
pub use noise::Noise;
pub use norm::{Scope, StepNorm};
pub use pgd::{Pgd, Start};
pub use rng::Rng;
pub use smart::{BregmanProximal, Smart, SmartDivergence};
pub use spectral_norm::{SpectralNorm, SpectralNormLinear};
pub use step::{Accumulator, Passes, Step};
pub use target::{RowLookup, Target, TargetKind};
pub use target_shift::{Divergence, TargetShift};
pub use vat::Vat;
pub use yopo::Yopo;

pub mod experiments;
