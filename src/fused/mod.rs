//! Fused, differentiable operations: one pass over the data forward and one backward, where candle
//! builds a chain of tensor operations (a pass and an allocation each) or has a fused op without a
//! backward.
//!
//! | function | replaces | module |
//! |---|---|---|
//! | [`gelu_erf`], [`gelu_tanh`] | `Tensor::gelu_erf`, `Tensor::gelu` | `gelu` |
//! | [`layer_norm`] | [`crate::ops::layer_norm`] | `layer_norm` |
//! | [`softmax_last_dim`], [`log_softmax_last_dim`] | [`crate::ops::softmax_last_dim`], [`crate::ops::log_softmax_last_dim`] | `softmax` |
//! | [`cross_entropy`] | `candle_nn::loss::cross_entropy` | `softmax` |
//! | [`linear`] | `candle_nn::Linear::forward` | `linear` |
//! | [`embedding`] | `Tensor::index_select` on an embedding matrix (its backward) | `embedding` |
//! | [`attention`] | [`crate::ops::attention`] (heads split by reshapes, candle's batched matmul) | `attention` |
//! | [`conv2d`] | `Tensor::conv2d` (its backward) | `conv` |
//! | [`backward_for`], [`backward_except`], [`backward_first_order`] | `Tensor::backward` | `wanted` |
//! | [`in_worker_pool`] | calling the ops from outside the thread pool | `threads` |
//! | [`no_idle_spinning`] | candle's spinning elementwise workers (a setting) | `threads` |
//!
//! Every op's backward is itself a fused op whose backward is built from differentiable pieces, so
//! gradient penalty and Hutchinson (double backward) keep working and run fused code on both passes.
//! The linear and convolution ops and the layer norm's scale and shift also leave out gradients
//! nobody needs: the input's of a first layer fed with data, and, in a pass run by
//! [`backward_for`], the weights' (the inner passes of gradient penalty and Hutchinson).
//! `tests/suite/fused.rs` checks each against its composite form in [`crate::ops`]: values, first derivatives and
//! Hessian-vector products against finite differences, in f64. f32 and f64; CPU only: on another
//! device each function falls back to the composite form. Book: "Fused operations and speed".

mod affine;
mod attention;
mod conv;
mod embedding;
mod gelu;
mod kernel;
mod layer_norm;
mod linear;
mod product;
mod softmax;
mod threads;
mod wanted;

pub use attention::attention;
pub use conv::conv2d;
pub(crate) use embedding::check_ids;
pub use embedding::embedding;
pub(crate) use gelu::{CUBIC, Derivative, SQRT_2_OVER_PI, gelu_erf_scaled, gelu_tanh_scaled};
pub use gelu::{gelu_erf, gelu_tanh};
pub use kernel::{EXP_F32_ZERO_BELOW, erf_f32, exp_f32};
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use softmax::{cross_entropy, log_softmax_last_dim, softmax_last_dim};
pub use threads::{SPIN_LIMIT_VAR, WORKER_STACK_BYTES, in_worker_pool, no_idle_spinning};
pub(crate) use wanted::first_order_pass;
pub use wanted::{backward_except, backward_first_order, backward_for};
