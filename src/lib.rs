//! # advtrain
//!
//! Adversarial training and smoothness regularisation for [candle](https://github.com/huggingface/candle),
//! as small components you call inside your own training loop, with every equivalence between them
//! checked numerically.
//!
//! | module | concept |
//! |---|---|
//! | [`method`] | one interface for every training method: [`Method::step`] on a [`Batch`]; [`Plain`] |
//! | [`regulariser`] | penalties that compose with any method: `method.with(regulariser)`, label smoothing |
//! | [`target`] | what is perturbed: input, embedding output (padding mask), embedding matrix / weight, in place |
//! | [`noise`] | random noise on inputs, embeddings, weights, labels; the k-sample average |
//! | [`laplacian`] | noise integrated out: `sigma^2/2 tr(H)` by Hutchinson probes |
//! | [`target_shift`] | output smoothness `sum_i lambda_i ||grad f_i||^2`, random-projection estimator |
//! | [`divergence`] | the one KL divergence, and what is built from it |
//! | [`norm`] | step geometry: FGM direction and its dual penalty |
//! | [`fgm`] | FGM / FGSM |
//! | [`gradient_penalty`] | `eps * P(grad_x L)`, exact or by finite differences |
//! | [`pgd`], [`free_at`], [`yopo`], [`freelb`], [`smart`], [`vat`] | the multi-step and label-free methods |
//! | [`models`] | trainable models on the fused ops: a BERT-family classifier (Hugging Face checkpoints), an image CNN |
//! | [`local_linearity`] | the local-linearity regulariser: the loss's distance from its tangent plane in the ball |
//! | [`spectral_norm`] | spectral normalisation, Lipschitz bound |
//! | [`second_order`] | the guard against silently wrong second-order gradients |
//! | [`ops`], [`fused`] | differentiable layer norm, softmax, GELU; fused CPU versions |
//! | [`rng`], [`init`] | the crate's seeded randomness and initialisation |
//! | [`estimate`] | a Monte-Carlo estimate with its standard error |
//! | `verify`, `toy`, `equivalence` | the verification harness (feature `verify`): finite-difference checks, small models, every equivalence as a runnable check |
//!
//! A method takes a [`Batch`] (the [`Target`] and the model as closures over the perturbed point)
//! and returns a [`Step`]: the loss and a `GradStore` for your optimiser. Switching method is the
//! one line that builds it. Methods that differentiate a gradient need `CANDLE_GRAD_DO_NOT_DETACH=1`
//! in the environment and say so with an error when it is missing ([`second_order`]).
//!
//! ```
//! use advtrain::{Batch, Fgm, GradientPenalty, Method, Target};
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
//! let target = Target::input(&x)?;
//!
//! let mut fgm = Fgm::new(0.1)?;
//! let step = fgm.step(&Batch::new(&target, &loss), &mut rng)?; // two forward-backward passes
//! opt.step(&step.grads)?;
//! # if advtrain::second_order::is_enabled() {
//! let mut penalty = GradientPenalty::new(0.1)?; // needs CANDLE_GRAD_DO_NOT_DETACH=1
//! let step = penalty.step(&Batch::new(&target, &loss), &mut rng)?;
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
    #[doc = include_str!("../book/src/own_loop.md")]
    mod own_loop {}
    #[doc = include_str!("../book/src/min_max.md")]
    mod min_max {}
    #[doc = include_str!("../book/src/noise.md")]
    mod noise {}
    #[doc = include_str!("../book/src/jet.md")]
    mod jet {}
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
    #[doc = include_str!("../book/src/models.md")]
    mod models {}
    #[doc = include_str!("../book/src/experiments.md")]
    mod experiments {}
    #[doc = include_str!("../book/src/gpu.md")]
    mod gpu {}
    #[doc = include_str!("../book/src/fused.md")]
    mod fused {}
}

pub mod ball;
pub mod device;
pub mod divergence;
pub mod dropout;
pub mod error;
pub mod estimate;
pub mod fgm;
pub mod free_at;
pub mod freelb;
pub mod fused;
pub mod gradient_penalty;
mod grads;
pub mod init;
pub mod jet;
pub mod laplacian;
pub mod local_linearity;
pub mod method;
pub mod models;
pub mod noise;
pub mod norm;
pub mod ops;
pub mod pgd;
pub mod regulariser;
pub mod rng;
pub mod second_order;
pub mod smart;
pub mod spectral_norm;
pub mod step;
pub mod target;
pub mod target_shift;
pub mod vat;
pub mod yopo;

// The verification harness: finite-difference checks, small models and every equivalence as a
// runnable check. The command line's `verify` table, the tests and the notebooks use it; a library
// user does not build it (feature `verify`).
#[cfg(feature = "verify")]
pub mod equivalence;
#[cfg(feature = "verify")]
pub mod toy;
#[cfg(feature = "verify")]
pub mod verify;

pub use ball::{Ball, ValidRange};
pub use dropout::HeldDropout;
pub use error::{Error, Result};
pub use fgm::{Fgm, FgmConfig};
pub use free_at::{FreeAt, FreeAtConfig};
pub use freelb::{FreeLb, FreeLbConfig};
pub use gradient_penalty::{GradientPenalty, GradientPenaltyConfig, PenaltyMethod};
pub use jet::Jet;
pub use laplacian::{CurvatureMethod, Laplacian, LaplacianConfig, ProbeKind};
pub use local_linearity::{LocalLinearity, LocalLinearityConfig};
pub use method::{Batch, GradientCheck, Method, Plain};
pub use noise::Noise;
pub use norm::{Scope, StepNorm};
pub use pgd::{Pgd, PgdConfig, Start};
pub use regulariser::{LabelSmoothing, Penalty, Regularised, Regulariser, WithRegulariser};
pub use rng::Rng;
pub use smart::{BregmanProximal, Smart, SmartConfig, SmartDivergence};
pub use spectral_norm::{SpectralNorm, SpectralNormLinear};
pub use step::{Accumulator, Objective, Passes, Step};
pub use target::{RowLookup, Target, TargetKind};
pub use target_shift::{Divergence, TargetShift, TargetShiftConfig};
pub use vat::{Vat, VatConfig};
pub use yopo::{Yopo, YopoConfig};
