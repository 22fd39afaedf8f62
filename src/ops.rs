//! Differentiable building blocks where candle's fused ops drop gradients.
//!
//! In candle 0.11 the fused `candle_nn::LayerNorm` (on contiguous input), `ops::layer_norm`, `RmsNorm`
//! and `ops::softmax_last_dim` are built without a backward pass: a perturbation upstream of them gets
//! no gradient, or a silently wrong one. The functions here are composites of differentiable ops, so
//! they work to any order (checked by finite differences in `tests/suite/ops.rs`). Book: "Introduction",
//! section "Two facts about candle".

use crate::Result;
use candle_core::{D, Module, Tensor};

/// Results of the differentiable ops: candle's, so they drop into `Module::forward`.
type OpResult<T> = candle_core::Result<T>;
use candle_nn::{Init, VarBuilder};

/// Layer normalisation over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> OpResult<Tensor> {
    crate::error::check_positive("eps", eps)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    Ok(affine(y, weight, bias)?)
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

    /// The same layer norm through the fused op ([`crate::fused::layer_norm`]): one pass forward and
    /// one backward, differentiable to any order; equal to [`Module::forward`].
    pub fn forward_fused(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::fused::layer_norm(x, Some(&self.weight), Some(&self.bias), self.eps)
    }

    /// The same layer norm on a jet (Taylor mode, [`crate::jet`]).
    pub fn forward_jet(&self, x: &crate::Jet) -> candle_core::Result<crate::Jet> {
        x.layer_norm(Some(&self.weight), Some(&self.bias), self.eps)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, Some(&self.weight), Some(&self.bias), self.eps)
    }
}

/// Softmax over the last dimension, differentiable (unlike `candle_nn::ops::softmax_last_dim`).
pub fn softmax_last_dim(x: &Tensor) -> OpResult<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> OpResult<Tensor> {
    candle_nn::ops::log_softmax(x, D::Minus1)
}

/// Cross-entropy against soft targets (rows of probabilities), averaged over the batch:
/// `-mean_b sum_k q_bk log softmax(z)_bk`. With one-hot targets it equals
/// `candle_nn::loss::cross_entropy`; with smoothed targets it is the label-smoothing loss.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> OpResult<Tensor> {
    if logits.shape() != targets.shape() {
        return Err(crate::Error::ShapeMismatch {
            name: "targets",
            expected: format!("{:?} (the logits' shape)", logits.dims()),
            got: targets.dims().to_vec(),
        }
        .into());
    }
    let log_p = log_softmax_last_dim(logits)?;
    (log_p * targets)?.sum(D::Minus1)?.mean_all()?.neg()
}

/// The exact GELU `x Phi(x)` from candle's differentiable primitives: the reference
/// [`crate::fused::gelu_erf`] is checked against, and its form off the CPU.
pub fn gelu_erf(x: &Tensor) -> OpResult<Tensor> {
    let phi = (((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?;
    x * phi
}

/// The tanh GELU `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2` (BERT's original, candle's
/// `gelu`) from differentiable primitives: the reference for [`crate::fused::gelu_tanh`].
pub fn gelu_tanh(x: &Tensor) -> OpResult<Tensor> {
    use crate::fused::{CUBIC, SQRT_2_OVER_PI};
    let u = ((x + ((x * x.sqr()?)? * CUBIC)?)? * SQRT_2_OVER_PI)?;
    (x * 0.5)? * (u.tanh()? + 1.0)?
}

/// Multi-head attention from candle's differentiable primitives: each of `q` `(batch, n, width)`
/// and `k`, `v` `(batch, m, width)` split into `heads` heads by reshape and transpose,
/// `softmax(q_h k_h^T / sqrt(width / heads) + key_bias) v_h` by batched matmuls, the heads merged
/// back to `(batch, n, width)`. The reference [`crate::fused::attention`] is checked against, and
/// its form off the CPU; `key_bias` broadcasts to the scores `(batch, heads, n, m)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: Option<&Tensor>,
    heads: usize,
) -> OpResult<Tensor> {
    let (b, n, width) = q.dims3()?;
    let head = head_width(width, heads)?;
    let split = |x: &Tensor| -> OpResult<Tensor> {
        let tokens = x.dim(1)?;
        x.reshape((b, tokens, heads, head))?
            .transpose(1, 2)?
            .contiguous()
    };
    let scores = (split(q)?.matmul(&split(k)?.t()?.contiguous()?)? / (head as f64).sqrt())?;
    let scores = match key_bias {
        Some(bias) => scores.broadcast_add(bias)?,
        None => scores,
    };
    softmax_last_dim(&scores)?
        .matmul(&split(v)?)?
        .transpose(1, 2)?
        .reshape((b, n, width))
}

/// The width of one of `heads` heads of a `width`-wide attention, or an error naming `heads` unless
/// they divide the width. Shared by [`attention`] and [`crate::fused::attention`].
pub(crate) fn head_width(width: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(crate::Error::InvalidArgument {
            name: "heads",
            reason: format!("{heads} heads for a width of {width}"),
            fix: "pass a number of heads that divides the width".into(),
        });
    }
    Ok(width / heads)
}
