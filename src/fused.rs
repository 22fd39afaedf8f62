//! Fused, differentiable elementwise operations: one pass over the data forward and one backward,
//! where candle builds a chain of tensor operations (a pass and an allocation each).
//!
//! `gelu_erf(x) = x Phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2` and `phi(x) = exp(-x^2/2) /
//! sqrt(2 pi)`:
//!
//! | order | function | fused op |
//! |---|---|---|
//! | 0 | `x Phi(x)` | `GeluErf` |
//! | 1 | `Phi(x) + x phi(x)` | `GeluErfGrad` |
//! | 2 | `phi(x) (2 - x^2)` | `GeluErfGrad2` |
//! | 3 | `phi(x) (x^3 - 4x)` | composite tensor ops |
//!
//! Each op's backward multiplies the incoming gradient by the next op, which is itself
//! differentiable: gradient penalty and Hutchinson (double backward) see the true second derivative,
//! and a third-order pass still works. candle's own `gelu_erf` backward is a chain of eleven tensor
//! operations and uses 0.398942 for `1 / sqrt(2 pi)` (0.3989422804...), so its derivative is off by
//! up to 1e-8; the fused ops use the exact constant (`tests/fused.rs` checks both against finite
//! differences).
//!
//! CPU only: on another device the functions fall back to the composite form, which is exact.
//! Book: "Speed".

use crate::Result;
use candle_core::cpu::erf::{erf_f32, erf_f64};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Applies `f` (in f64 or f32) to every element of contiguous CPU storage.
fn map(
    name: &'static str,
    storage: &CpuStorage,
    layout: &Layout,
    f64_fn: fn(f64) -> f64,
    f32_fn: fn(f32) -> f32,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg(format!(
            "{name}: the input must be contiguous (the public function makes it so)"
        )));
    };
    let out = match storage {
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].iter().map(|&x| f64_fn(x)).collect()),
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].iter().map(|&x| f32_fn(x)).collect()),
        _ => {
            return Err(candle_core::Error::Msg(format!(
                "{name}: f32 or f64 only; convert with to_dtype first"
            )));
        }
    };
    Ok((out, layout.shape().clone()))
}

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf_f64(x * std::f64::consts::FRAC_1_SQRT_2))
}

fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn gelu_grad_f64(x: f64) -> f64 {
    0.5 * (1.0 + erf_f64(x * std::f64::consts::FRAC_1_SQRT_2))
        + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

fn gelu_grad_f32(x: f32) -> f32 {
    0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * FRAC_1_SQRT_2PI as f32 * (-0.5 * x * x).exp()
}

fn gelu_grad2_f64(x: f64) -> f64 {
    FRAC_1_SQRT_2PI * (-0.5 * x * x).exp() * (2.0 - x * x)
}

fn gelu_grad2_f32(x: f32) -> f32 {
    FRAC_1_SQRT_2PI as f32 * (-0.5 * x * x).exp() * (2.0 - x * x)
}

struct GeluErf;
struct GeluErfGrad;
struct GeluErfGrad2;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "advtrain-gelu-erf"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map(self.name(), s, l, gelu_f64, gelu_f32)
    }
    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((grad * x.apply_op1(GeluErfGrad)?)?))
    }
}

impl CustomOp1 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "advtrain-gelu-erf-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map(self.name(), s, l, gelu_grad_f64, gelu_grad_f32)
    }
    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((grad * x.apply_op1(GeluErfGrad2)?)?))
    }
}

impl CustomOp1 for GeluErfGrad2 {
    fn name(&self) -> &'static str {
        "advtrain-gelu-erf-grad2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map(self.name(), s, l, gelu_grad2_f64, gelu_grad2_f32)
    }
    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // phi(x) (x^3 - 4x), as composite operations.
        let phi = ((x.sqr()? * -0.5)?.exp()? * FRAC_1_SQRT_2PI)?;
        let poly = ((x.sqr()? - 4.0)? * x)?;
        Ok(Some((grad * (phi * poly)?)?))
    }
}

/// `x Phi(x)`, the exact GELU, as one fused pass with a fused, differentiable backward (CPU; the
/// composite form elsewhere).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return gelu_erf_composite(x);
    }
    Ok(x.contiguous()?.apply_op1(GeluErf)?)
}

/// The exact GELU from candle's differentiable primitives (no fused op): the reference the fused op
/// is checked against, and the form used off the CPU.
pub fn gelu_erf_composite(x: &Tensor) -> Result<Tensor> {
    let phi = (((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?;
    Ok((x * phi)?)
}
