//! Differentiable building blocks where candle's fused ops drop gradients.
//!
//! In candle 0.11 the fused `candle_nn::LayerNorm` (on contiguous input), `ops::layer_norm`, `RmsNorm`
//! and `ops::softmax_last_dim` are built without a backward pass: a perturbation upstream of them gets
//! no gradient, or a silently wrong one. The functions here are composites of differentiable ops, so
//! they work to any order (checked by finite differences in `tests/ops.rs`). Book: "Introduction",
//! section "Two facts about candle".

use crate::Result;
use candle_core::{D, Module, Tensor};
use candle_nn::{Init, VarBuilder};

/// Layer normalisation over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    crate::error::check_positive("eps", eps)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    affine(y, weight, bias)
}

/// `y * weight + bias` (each optional, broadcast over the last dimension): layer norm's scale and
/// shift, shared by this composite form and [`crate::fused::layer_norm`].
pub(crate) fn affine(y: Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = match weight {
        Some(w) => y.broadcast_mul(w)?,
        None => y,
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// A layer-norm module with learnable scale and shift that differentiates to any order.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// From explicit scale and shift.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Scale 1 and shift 0, stored under `weight` and `bias` in `vb` (the names candle-nn uses).
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        Ok(Self::new(weight, bias, eps))
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(layer_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
        )?)
    }
}

/// Softmax over the last dimension, differentiable (unlike `candle_nn::ops::softmax_last_dim`).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(x, D::Minus1)?)
}

/// Cross-entropy against soft targets (rows of probabilities), averaged over the batch:
/// `-mean_b sum_k q_bk log softmax(z)_bk`. With one-hot targets it equals
/// `candle_nn::loss::cross_entropy`; with smoothed targets it is the label-smoothing loss.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.shape() != targets.shape() {
        return Err(crate::Error::ShapeMismatch {
            name: "targets",
            expected: format!("{:?} (the logits' shape)", logits.dims()),
            got: targets.dims().to_vec(),
        });
    }
    let log_p = log_softmax_last_dim(logits)?;
    Ok((log_p * targets)?.sum(D::Minus1)?.mean_all()?.neg()?)
}
