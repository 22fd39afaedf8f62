//! GELU, exact (erf) and tanh forms, as fused ops whose backward is itself a fused op.
//!
//! `gelu_erf(x) = x Phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2` and `phi(x) = exp(-x^2/2) /
//! sqrt(2 pi)`:
//!
//! | order | function | op |
//! |---|---|---|
//! | 0 | `x Phi(x)` | `GeluErf` |
//! | 1 | `Phi(x) + x phi(x)` | `GeluErfGrad` |
//! | 2 | `phi(x) (2 - x^2)` | `GeluErfGrad2` |
//! | 3 | `phi(x) (x^3 - 4x)` | composite tensor ops |
//!
//! `gelu_tanh(x) = x (1 + tanh u) / 2` with `u = c (x + k x^3)`, `c = sqrt(2 / pi)`, `k = 0.044715`;
//! with `t = tanh u`, `s = 1 - t^2` and `u'`, `u''`, `u'''` the derivatives of `u`:
//!
//! | order | function | op |
//! |---|---|---|
//! | 0 | `x (1 + t) / 2` | `GeluTanh` |
//! | 1 | `(1 + t) / 2 + x s u' / 2` | `GeluTanhGrad` |
//! | 2 | `s A`, `A = u' + x (u'' - 2 t u'^2) / 2` | `GeluTanhGrad2` |
//! | 3 | `-2 t s u' A + s A'` | composite tensor ops |
//!
//! Each op's backward multiplies the incoming gradient by the next op, so gradient penalty and
//! Hutchinson (double backward) run fused code for the second derivative too, and a third-order pass
//! still works. candle's own `gelu_erf` backward is a chain of eleven tensor operations and uses
//! 0.398942 for `1 / sqrt(2 pi)` (0.3989422804...), a relative error of 1.5e-7; the fused ops use
//! the exact constant (`tests/fused.rs`). Book: "Fused operations and speed".

use super::kernel::{Real, check_input, dispatch1, map};
use crate::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC: f64 = 0.044_715;

fn phi<T: Real>(x: T) -> T {
    T::constant(FRAC_1_SQRT_2PI) * (T::constant(-0.5) * x * x).exp_fast()
}

fn big_phi<T: Real>(x: T) -> T {
    T::constant(0.5) * (T::one() + (x * T::constant(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

fn gelu_erf_0<T: Real>(v: &[T]) -> Vec<T> {
    map(v, |x| x * big_phi(x))
}

fn gelu_erf_1<T: Real>(v: &[T]) -> Vec<T> {
    map(v, |x| big_phi(x) + x * phi(x))
}

fn gelu_erf_2<T: Real>(v: &[T]) -> Vec<T> {
    map(v, |x| phi(x) * (T::constant(2.0) - x * x))
}

/// `(t, s, u', u'')` of the tanh form at `x`.
fn tanh_parts<T: Real>(x: T) -> (T, T, T, T) {
    let (c, k) = (T::constant(SQRT_2_OVER_PI), T::constant(CUBIC));
    let t = (c * (x + k * x * x * x)).tanh();
    let u1 = c * (T::one() + T::constant(3.0) * k * x * x);
    let u2 = T::constant(6.0) * c * k * x;
    (t, T::one() - t * t, u1, u2)
}

fn gelu_tanh_0<T: Real>(v: &[T]) -> Vec<T> {
    map(v, |x| {
        let (t, ..) = tanh_parts(x);
        T::constant(0.5) * x * (T::one() + t)
    })
}

fn gelu_tanh_1<T: Real>(v: &[T]) -> Vec<T> {
    map(v, |x| {
        let (t, s, u1, _) = tanh_parts(x);
        T::constant(0.5) * (T::one() + t + x * s * u1)
    })
}

fn gelu_tanh_2<T: Real>(v: &[T]) -> Vec<T> {
    map(v, |x| {
        let (t, s, u1, u2) = tanh_parts(x);
        s * (u1 + T::constant(0.5) * x * (u2 - T::constant(2.0) * t * u1 * u1))
    })
}

/// One elementwise fused op: its kernel and what its backward multiplies the gradient by.
macro_rules! elementwise_op {
    ($op:ident, $name:literal, $kernel:ident, $derivative:expr) => {
        struct $op;

        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s: &CpuStorage,
                l: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                Ok((dispatch1!($name, s, l, $kernel), l.shape().clone()))
            }
            fn bwd(
                &self,
                x: &Tensor,
                _: &Tensor,
                grad: &Tensor,
            ) -> candle_core::Result<Option<Tensor>> {
                let derivative: fn(&Tensor) -> candle_core::Result<Tensor> = $derivative;
                Ok(Some((grad * derivative(x)?)?))
            }
        }
    };
}

elementwise_op!(GeluErf, "advtrain-gelu-erf", gelu_erf_0, |x| x
    .apply_op1(GeluErfGrad));
elementwise_op!(GeluErfGrad, "advtrain-gelu-erf-grad", gelu_erf_1, |x| x
    .apply_op1(GeluErfGrad2));
elementwise_op!(
    GeluErfGrad2,
    "advtrain-gelu-erf-grad2",
    gelu_erf_2,
    gelu_erf_third_derivative
);
elementwise_op!(GeluTanh, "advtrain-gelu-tanh", gelu_tanh_0, |x| x
    .apply_op1(GeluTanhGrad));
elementwise_op!(GeluTanhGrad, "advtrain-gelu-tanh-grad", gelu_tanh_1, |x| x
    .apply_op1(GeluTanhGrad2));
elementwise_op!(
    GeluTanhGrad2,
    "advtrain-gelu-tanh-grad2",
    gelu_tanh_2,
    gelu_tanh_third_derivative
);

/// `phi(x) (x^3 - 4x)`, from candle's differentiable primitives.
fn gelu_erf_third_derivative(x: &Tensor) -> candle_core::Result<Tensor> {
    let phi = ((x.sqr()? * -0.5)?.exp()? * FRAC_1_SQRT_2PI)?;
    let poly = ((x.sqr()? - 4.0)? * x)?;
    phi * poly
}

/// `-2 t s u' A + s A'` (see the module table), from candle's differentiable primitives.
fn gelu_tanh_third_derivative(x: &Tensor) -> candle_core::Result<Tensor> {
    let (c, k) = (SQRT_2_OVER_PI, CUBIC);
    let x2 = x.sqr()?;
    let t = ((x + (x * &x2)? * k)? * c)?.tanh()?;
    let s = (1.0 - t.sqr()?)?;
    let u1 = ((&x2 * (3.0 * k))? + 1.0)? * c;
    let u1 = u1?;
    let u2 = (x * (6.0 * c * k))?;
    let u3 = 6.0 * c * k;
    let u1_sq = u1.sqr()?;
    // A = u' + x (u'' - 2 t u'^2) / 2
    let inner = (&u2 - ((&t * &u1_sq)? * 2.0)?)?;
    let a = (&u1 + (x * &inner)? * 0.5)?;
    // A' = u'' + (u'' - 2 t u'^2) / 2 + x (u''' - 2 s u'^3 - 4 t u' u'') / 2
    let tail = (((&s * &u1_sq)? * &u1)? * -2.0)?;
    let tail = ((tail - ((&t * &u1)? * &u2)? * 4.0)? + u3)?;
    let a_prime = ((&u2 + (inner * 0.5)?)? + (x * tail)? * 0.5)?;
    let first = ((((&t * &s)? * &u1)? * &a)? * -2.0)?;
    first + (s * a_prime)?
}

/// Applies a fused elementwise op on the CPU, or `composite` elsewhere.
fn fused_or(
    name: &'static str,
    x: &Tensor,
    op: impl CustomOp1 + Send + Sync + 'static,
    composite: fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    check_input(name, x)?;
    if !x.device().is_cpu() {
        return composite(x);
    }
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// `x Phi(x)`, the exact GELU, as one fused pass with a fused, differentiable backward (CPU; the
/// composite form elsewhere).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    fused_or("x", x, GeluErf, gelu_erf_composite)
}

/// The exact GELU from candle's differentiable primitives (no fused op): the reference the fused op
/// is checked against, and the form used off the CPU.
pub fn gelu_erf_composite(x: &Tensor) -> Result<Tensor> {
    let phi = (((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?;
    Ok((x * phi)?)
}

/// `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`, the tanh GELU (BERT's original, candle's
/// `gelu`), fused like [`gelu_erf`].
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    fused_or("x", x, GeluTanh, gelu_tanh_composite)
}

/// The tanh GELU from candle's differentiable primitives: the reference for [`gelu_tanh`].
pub fn gelu_tanh_composite(x: &Tensor) -> Result<Tensor> {
    let u = ((x + ((x * x.sqr()?)? * CUBIC)?)? * SQRT_2_OVER_PI)?;
    Ok(((x * 0.5)? * (u.tanh()? + 1.0)?)?)
}
