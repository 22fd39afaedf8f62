//! Step geometry: the direction of an FGM step and its first-order dual, the gradient penalty.
//!
//! For a gradient `g = dL/dx` and a step `x + eps * d(g)` with `d(g)` held constant, a Taylor expansion
//! in eps gives `grad_theta L(x + eps d) = grad_theta [L + eps * P(g)] + O(eps^2)`, where `P` is the
//! penalty whose gradient in `g` is `d` (book chapter "FGM and gradient penalty", and eq. (11)-(16) of
//! the seed article on generalisation):
//!
//! | [`StepNorm`]   | direction `d(g)` | penalty `P(g)` |
//! |---------------|------------------|----------------|
//! | `Raw`         | `g`              | `||g||^2 / 2`  |
//! | `L2(scope)`   | `g / ||g||`      | `||g||` (summed over examples for `PerExample`) |
//! | `Sign`        | `sign(g)`        | `||g||_1`      |
//!
//! Both functions are zero-safe: a zero gradient gives a zero direction and a zero penalty with a zero
//! (not NaN) derivative, and `direction(g) = dP/dg` holds exactly, zero entries included.

use crate::Result;
use crate::target::Target;
use candle_core::Tensor;

/// Over which entries an L2 norm is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One norm per example (per sentence for the embedding output).
    PerExample,
    /// One norm for the whole batch (the only choice for weight targets).
    PerBatch,
}

/// The geometry of a step, shared by FGM (its direction) and gradient penalty (its dual penalty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepNorm {
    /// `d = g`, penalty `||g||^2 / 2`.
    Raw,
    /// `d = g / ||g||`, penalty `||g||`.
    L2(Scope),
    /// `d = sign(g)` (FGSM), penalty `||g||_1`.
    Sign,
}

/// `sqrt(s)` that is exact for `s > 0` and has value 0 and derivative 0 at `s = 0`.
fn safe_sqrt(s: &Tensor) -> Result<Tensor> {
    let at_zero = s.eq(0.0)?.to_dtype(s.dtype())?;
    Ok(((s + &at_zero)?.sqrt()? - at_zero)?)
}

/// The squared L2 norm of `t` per example or for the whole batch, shaped to broadcast against `t`.
pub fn squared_norms(target: &Target, t: &Tensor, scope: Scope) -> Result<Tensor> {
    let squares = t.sqr()?;
    match scope {
        Scope::PerExample => target.per_example_sum(&squares),
        Scope::PerBatch => Ok(squares.sum_all()?),
    }
}

impl StepNorm {
    /// The unit direction `d(g)` (masked, detached); multiply by eps for the FGM step.
    pub fn direction(&self, target: &Target, g: &Tensor) -> Result<Tensor> {
        target.check_delta(g)?;
        let g = g.detach();
        let d = match self {
            StepNorm::Raw => g,
            StepNorm::Sign => g.sign()?,
            StepNorm::L2(scope) => {
                let norms = squared_norms(target, &g, *scope)?.sqrt()?;
                let norms = (&norms + norms.eq(0.0)?.to_dtype(norms.dtype())?)?;
                g.broadcast_div(&norms)?
            }
        };
        target.apply_mask(&d)
    }

    /// The penalty `P(g)` as a scalar tensor, differentiable through `g` (for gradient penalty).
    pub fn penalty(&self, target: &Target, g: &Tensor) -> Result<Tensor> {
        target.check_delta(g)?;
        Ok(match self {
            StepNorm::Raw => (g.sqr()?.sum_all()? * 0.5)?,
            // |g| as g * sign(g) with the sign held constant: derivative sign(g), 0 at g = 0 (candle's
            // own `abs` backward gives +1 there, which would break the duality with the sign step).
            StepNorm::Sign => (g * g.sign()?.detach())?.sum_all()?,
            StepNorm::L2(scope) => safe_sqrt(&squared_norms(target, g, *scope)?)?.sum_all()?,
        })
    }
}
