//! GELU, exact (erf) and tanh forms, as fused ops whose backward is itself a fused op.
//!
//! `gelu_erf(x) = x Phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2` and `phi(x) = exp(-x^2/2) /
//! sqrt(2 pi)`:
//!
//! | order | function | op |
//! |---|---|---|
//! | 0 | `x Phi(x)` | `GeluErf` |
//! | 1 | `Phi(x) + x phi(x)` | `GeluErfFirst` (times `w`) |
//! | 2 | `phi(x) (2 - x^2)` | `GeluErfSecond` (times `w`) |
//! | 3 | `phi(x) (x^3 - 4x)` | composite tensor ops |
//!
//! `gelu_tanh(x) = x (1 + tanh u) / 2` with `u = c (x + k x^3)`, `c = sqrt(2 / pi)`, `k = 0.044715`;
//! with `t = tanh u`, `s = 1 - t^2` and `u'`, `u''`, `u'''` the derivatives of `u`:
//!
//! | order | function | op |
//! |---|---|---|
//! | 0 | `x (1 + t) / 2` | `GeluTanh` |
//! | 1 | `(1 + t) / 2 + x s u' / 2` | `GeluTanhFirst` (times `w`) |
//! | 2 | `s A`, `A = u' + x (u'' - 2 t u'^2) / 2` | `GeluTanhSecond` (times `w`) |
//! | 3 | `-2 t s u' A + s A'` | composite tensor ops |
//!
//! The derivative ops take the incoming gradient `w` as a second input and return `w f^(k)(x)` in
//! one pass (no derivative tensor, then a product): the backward of `f` is `First(x, u)`, and the
//! backward of `First(x, w)` is `Second(x, w u)` for `x` and `First(x, u)` for `w`. Gradient penalty
//! and Hutchinson (double backward) so run fused code for the second derivative too, and a
//! third-order pass still works. candle's own `gelu_erf` backward is a chain of eleven tensor operations and uses
//! 0.398942 for `1 / sqrt(2 pi)` (0.3989422804...), a relative error of 1.5e-7; the fused ops use
//! the exact constant (`tests/suite/fused.rs`). Book: "Fused operations and speed".

use super::kernel::{Real, check_input, dispatch1, dispatch2, map, zip_map};
use super::wanted::{needs_gradient, returned};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
pub(crate) const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
pub(crate) const CUBIC: f64 = 0.044_715;

#[inline(always)]
fn phi<T: Real>(x: T) -> T {
    T::constant(FRAC_1_SQRT_2PI) * (T::constant(-0.5) * x * x).exp_fast()
}

#[inline(always)]
fn big_phi<T: Real>(x: T) -> T {
    T::constant(0.5) * (T::one() + (x * T::constant(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

#[inline(always)]
fn gelu_erf_0<T: Real>(x: T) -> T {
    x * big_phi(x)
}

#[inline(always)]
fn gelu_erf_1<T: Real>(x: T) -> T {
    big_phi(x) + x * phi(x)
}

#[inline(always)]
fn gelu_erf_2<T: Real>(x: T) -> T {
    phi(x) * (T::constant(2.0) - x * x)
}

/// `(t, s, u', u'')` of the tanh form at `x`.
#[inline(always)]
fn tanh_parts<T: Real>(x: T) -> (T, T, T, T) {
    let (c, k) = (T::constant(SQRT_2_OVER_PI), T::constant(CUBIC));
    let t = (c * (x + k * x * x * x)).tanh();
    let u1 = c * (T::one() + T::constant(3.0) * k * x * x);
    let u2 = T::constant(6.0) * c * k * x;
    (t, T::one() - t * t, u1, u2)
}

#[inline(always)]
fn gelu_tanh_0<T: Real>(x: T) -> T {
    let (t, ..) = tanh_parts(x);
    T::constant(0.5) * x * (T::one() + t)
}

#[inline(always)]
fn gelu_tanh_1<T: Real>(x: T) -> T {
    let (t, s, u1, _) = tanh_parts(x);
    T::constant(0.5) * (T::one() + t + x * s * u1)
}

#[inline(always)]
fn gelu_tanh_2<T: Real>(x: T) -> T {
    let (t, s, u1, u2) = tanh_parts(x);
    s * (u1 + T::constant(0.5) * x * (u2 - T::constant(2.0) * t * u1 * u1))
}

/// `w f(x)` elementwise: a derivative times the incoming gradient, in one pass.
fn scaled<T: Real>(x: &[T], w: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    zip_map(x, w, |x, w| w * f(x))
}

/// One GELU form as three ops: the function `f` (`$op`), and `w f'(x)` and `w f''(x)` (`$first`,
/// `$second`), each a single pass over `x` and the incoming gradient `w`. For an incoming `u`:
///
/// * `$op`'s backward is `$first(x, u)`;
/// * `$first(x, w)`'s is `$second(x, w u)` for `x` and `$first(x, u)` for `w`;
/// * `$second(x, w)`'s is `w u f'''(x)` (composite) for `x` and `$second(x, u)` for `w`.
macro_rules! gelu_form {
    ($op:ident, $first:ident, $second:ident, $name:literal,
     $f0:ident, $f1:ident, $f2:ident, $f3:ident) => {
        struct $op;
        struct $first;
        struct $second;

        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s: &CpuStorage,
                l: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                Ok((dispatch1!($name, s, l, map, $f0), l.shape().clone()))
            }
            fn bwd(
                &self,
                x: &Tensor,
                _: &Tensor,
                u: &Tensor,
            ) -> candle_core::Result<Option<Tensor>> {
                Ok(returned(Some(x.apply_op2(&u.contiguous()?, $first)?)))
            }
        }

        scaled_derivative_op!($first, concat!($name, "-grad"), $f1, |x, w, u| x
            .apply_op2(&(w * u)?, $second)?);
        scaled_derivative_op!($second, concat!($name, "-grad2"), $f2, |x, w, u| ((w
            * u)?
            * $f3(x)?)?);
    };
}

/// `$op(x, w) = w f(x)` as a fused op. Its backward for an incoming `u` is `$grad_x` (with `x`, `w`
/// and `u` bound to the names given) for `x`, and `$op(x, u)` for `w`.
macro_rules! scaled_derivative_op {
    ($op:ident, $name:expr, $f:ident, |$x:ident, $w:ident, $u:ident| $grad_x:expr) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                let out = dispatch2!($name, s1, l1, s2, l2, scaled, $f);
                Ok((out, l1.shape().clone()))
            }
            fn bwd(
                &self,
                $x: &Tensor,
                $w: &Tensor,
                _: &Tensor,
                u: &Tensor,
            ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
                let $u = &u.contiguous()?;
                let grad_x = match needs_gradient($x) {
                    true => Some($grad_x),
                    false => None,
                };
                let grad_w = match needs_gradient($w) {
                    true => Some($x.apply_op2($u, $op)?),
                    false => None,
                };
                Ok((returned(grad_x), returned(grad_w)))
            }
        }
    };
}

gelu_form!(
    GeluErf,
    GeluErfFirst,
    GeluErfSecond,
    "advtrain-gelu-erf",
    gelu_erf_0,
    gelu_erf_1,
    gelu_erf_2,
    gelu_erf_third_derivative
);
gelu_form!(
    GeluTanh,
    GeluTanhFirst,
    GeluTanhSecond,
    "advtrain-gelu-tanh",
    gelu_tanh_0,
    gelu_tanh_1,
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
    composite: fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    check_input(name, x)?;
    if !x.device().is_cpu() {
        return composite(x);
    }
    x.contiguous()?.apply_op1(op)
}

/// `x Phi(x)`, the exact GELU, as one fused pass with a fused, differentiable backward (CPU; the
/// composite form elsewhere).
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    fused_or("x", x, GeluErf, crate::ops::gelu_erf)
}

/// `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`, the tanh GELU (BERT's original, candle's
/// `gelu`), fused like [`gelu_erf`].
pub fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    fused_or("x", x, GeluTanh, crate::ops::gelu_tanh)
}

/// Which derivative of a GELU form a Taylor-mode rule scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Derivative {
    First,
    Second,
}

/// `first(x, w)` or `second(x, w)` as one fused pass when `x` is on the CPU; `None` elsewhere.
fn on_cpu(
    x: &Tensor,
    w: &Tensor,
    derivative: Derivative,
    first: impl CustomOp2 + Send + Sync + 'static,
    second: impl CustomOp2 + Send + Sync + 'static,
) -> Option<candle_core::Result<Tensor>> {
    let fused = || {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        match derivative {
            Derivative::First => x.apply_op2(&w, first),
            Derivative::Second => x.apply_op2(&w, second),
        }
    };
    x.device().is_cpu().then(fused)
}

/// `w f'(x)` or `w f''(x)` of the exact GELU: the tangent rules of Taylor mode ([`crate::jet`]). One
/// fused pass on the CPU (the same ops the backward uses, so they differentiate further); the
/// composite form elsewhere.
pub(crate) fn gelu_erf_scaled(
    x: &Tensor,
    w: &Tensor,
    derivative: Derivative,
) -> candle_core::Result<Tensor> {
    check_input("x", x)?;
    if let Some(fused) = on_cpu(x, w, derivative, GeluErfFirst, GeluErfSecond) {
        return fused;
    }
    let phi = ((x.sqr()? * -0.5)?.exp()? * FRAC_1_SQRT_2PI)?;
    let f = match derivative {
        Derivative::First => {
            let big_phi = (((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?;
            (big_phi + (x * phi)?)?
        }
        Derivative::Second => (phi * (2.0 - x.sqr()?)?)?,
    };
    f * w
}

/// `w f'(x)` or `w f''(x)` of the tanh GELU, like [`gelu_erf_scaled`].
pub(crate) fn gelu_tanh_scaled(
    x: &Tensor,
    w: &Tensor,
    derivative: Derivative,
) -> candle_core::Result<Tensor> {
    check_input("x", x)?;
    if let Some(fused) = on_cpu(x, w, derivative, GeluTanhFirst, GeluTanhSecond) {
        return fused;
    }
    let (c, k) = (SQRT_2_OVER_PI, CUBIC);
    let x2 = x.sqr()?;
    let t = ((x + (x * &x2)? * k)? * c)?.tanh()?;
    let s = (1.0 - t.sqr()?)?;
    let u1 = (((&x2 * (3.0 * k))? + 1.0)? * c)?;
    let f = match derivative {
        // (1 + t + x s u') / 2
        Derivative::First => (((&t + 1.0)? + ((x * &s)? * &u1)?)? * 0.5)?,
        // s (u' + x (u'' - 2 t u'^2) / 2)
        Derivative::Second => {
            let u2 = (x * (6.0 * c * k))?;
            let inner = (u2 - ((&t * u1.sqr()?)? * 2.0)?)?;
            (s * (u1 + ((x * inner)? * 0.5)?)?)?
        }
    };
    f * w
}
