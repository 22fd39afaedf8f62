//! Layer normalisation over the last dimension as a fused op with a fused, differentiable backward.
//!
//! For a row `x` of length `n`: `s = sqrt(var(x) + eps)`, `y = (x - mean x) / s`. The Jacobian is
//! symmetric, `J = (I - 1 1^T / n - y y^T / n) / s`, and the backward is
//!
//! `J g = (g - mean(g) - y mean(g y)) / s`                               (`NormalizeGrad`)
//!
//! whose own derivatives, for an incoming `u`, are `d/dg = J u` (the same op) and
//!
//! `d/dx = -<u, Jg> y / (n s) - mean(g y) J u / s - <u, y> J g / (n s)`,
//!
//! built from `NormalizeGrad` and candle's primitives, so every order is differentiable (gradient
//! penalty through a transformer, Hutchinson). Scale and shift are one more fused op
//! ([`super::affine`]). candle's own fused `layer_norm` has no backward at all. Book: "Fused operations and speed".

use super::kernel::{Real, check_input, dispatch1, dispatch2, last_dim, rows, rows2};
use super::wanted::returned;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Shape, Tensor};

/// `(mean, 1 / s)` of one row.
fn moments<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let n = T::constant(x.len() as f64);
    let mean = x.iter().fold(T::zero(), |a, &v| a + v) / n;
    let var = x
        .iter()
        .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean))
        / n;
    (mean, (var + T::constant(eps)).sqrt().recip())
}

fn normalize<T: Real>(x: &[T], n: usize, eps: f64) -> Vec<T> {
    rows(x, n, |x, y| {
        let (mean, inv) = moments(x, eps);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - mean) * inv;
        }
    })
}

fn normalize_grad<T: Real>(x: &[T], g: &[T], n: usize, eps: f64) -> Vec<T> {
    rows2(x, g, n, |x, g, out| {
        let (mean, inv) = moments(x, eps);
        let len = T::constant(x.len() as f64);
        let (mut sum_g, mut sum_gy) = (T::zero(), T::zero());
        for (&x, &g) in x.iter().zip(g) {
            sum_g = sum_g + g;
            sum_gy = sum_gy + g * (x - mean) * inv;
        }
        let (mean_g, mean_gy) = (sum_g / len, sum_gy / len);
        for ((out, &x), &g) in out.iter_mut().zip(x).zip(g) {
            *out = (g - mean_g - (x - mean) * inv * mean_gy) * inv;
        }
    })
}

struct Normalize {
    eps: f64,
}

struct NormalizeGrad {
    eps: f64,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "advtrain-normalize"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch1!(self.name(), s, l, normalize, last_dim(l), self.eps);
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = NormalizeGrad { eps: self.eps };
        Ok(returned(Some(x.apply_op2(&grad.contiguous()?, op)?)))
    }
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "advtrain-normalize-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch2!(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            normalize_grad,
            last_dim(l1),
            self.eps
        );
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        jg: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)? as f64;
        let ju = x.apply_op2(&u.contiguous()?, NormalizeGrad { eps: self.eps })?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let inv = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let y = centred.broadcast_mul(&inv)?;
        let u_jg = (u * jg)?.sum_keepdim(D::Minus1)?;
        let mean_gy = (g * &y)?.mean_keepdim(D::Minus1)?;
        let u_y = (u * &y)?.sum_keepdim(D::Minus1)?;
        let grad_x = (y.broadcast_mul(&(&u_jg * &inv)?)? / -n)?;
        let grad_x = (grad_x - ju.broadcast_mul(&(mean_gy * &inv)?)?)?;
        let grad_x = (grad_x - (jg.broadcast_mul(&(u_y * &inv)?)? / n)?)?;
        Ok((returned(Some(grad_x)), returned(Some(ju))))
    }
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension, with the normalisation
/// fused forward and backward and differentiable to any order (CPU; [`crate::ops::layer_norm`]
/// elsewhere). Same arguments as [`crate::ops::layer_norm`].
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> candle_core::Result<Tensor> {
    crate::error::check_positive("eps", eps)?;
    check_input("x", x)?;
    if !x.device().is_cpu() {
        return crate::ops::layer_norm(x, weight, bias, eps);
    }
    let y = x.contiguous()?.apply_op1(Normalize { eps })?;
    super::affine::affine(y, weight, bias)
}
