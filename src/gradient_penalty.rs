//! Gradient penalty: train on `L + eps * P(dL/dx)`, the first-order equivalent of FGM.
//!
//! `P` is the dual penalty of a [`StepNorm`]: `||g||^2 / 2` (raw), `||g||` (L2) or `||g||_1` (sign),
//! so `GradientPenalty::new(eps).with_norm(n)` and `Fgm::new(eps).with_norm(n)` (adversarial only)
//! give the same weight gradient up to O(eps^2) (see [`crate::norm`], and eq. (11)-(16) of the seed
//! article). Two ways to get `grad_theta P`:
//!
//! * [`PenaltyMethod::DoubleBackward`]: differentiate the gradient exactly (needs second order on;
//!   guarded). Cost: one forward, one backward for `dL/dx` alone ([`Target::point_gradient`]: the
//!   fused linear ops skip the weights' gradients there), and one double backward that takes every
//!   weight's gradient of `L + eps * P` together ([`Target::objective_gradients`]).
//! * [`PenaltyMethod::FiniteDifference`]: `grad_theta P(g) = d/dh grad_theta L(x + h d(g))` at h = 0,
//!   taken by the central difference `[grad L(x + h d) - grad L(x - h d)] / 2h` (error O(h^2)); first
//!   order only. Cost: three forward, three backward.
//!
//! Book chapter: "FGM and gradient penalty".

use crate::error::{check_non_negative, check_positive};
use crate::norm::StepNorm;
use crate::step::{Passes, Step, detach_all};
use crate::target::Target;
use crate::{Result, second_order};
use candle_core::Tensor;

/// How the penalty's weight gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PenaltyMethod {
    /// Exact, by differentiating the gradient (second order).
    DoubleBackward,
    /// Central finite difference of first-order gradients with step `h`.
    FiniteDifference {
        /// Step along the penalty's direction (about 1e-4 in f64, 1e-2 in f32).
        h: f64,
    },
}

/// The gradient-penalty regulariser `eps * P(dL/dx)`.
#[derive(Clone, Copy, Debug)]
pub struct GradientPenalty {
    eps: f64,
    norm: StepNorm,
    method: PenaltyMethod,
    allow_zero_gradient: bool,
}

impl GradientPenalty {
    /// `eps/2 * ||g||^2` by double backward.
    pub fn new(eps: f64) -> Result<Self> {
        check_non_negative("eps", eps)?;
        Ok(Self {
            eps,
            norm: StepNorm::Raw,
            method: PenaltyMethod::DoubleBackward,
            allow_zero_gradient: false,
        })
    }

    /// Sets the penalty: `Raw` is `||g||^2/2`, `L2` is `||g||`, `Sign` is `||g||_1`.
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.norm = norm;
        self
    }

    /// Sets how the penalty is differentiated.
    pub fn with_method(mut self, method: PenaltyMethod) -> Result<Self> {
        if let PenaltyMethod::FiniteDifference { h } = method {
            check_positive("h", h)?;
        }
        self.method = method;
        Ok(self)
    }

    /// With `true`, an all-zero gradient is accepted (penalty 0) instead of an error.
    pub fn allow_zero_gradient(mut self, allow: bool) -> Self {
        self.allow_zero_gradient = allow;
        self
    }

    /// The penalty `eps * P(g)` for a gradient `g` (differentiable through `g`).
    pub fn penalty(&self, target: &Target, g: &Tensor) -> Result<Tensor> {
        Ok((self.norm.penalty(target, g)? * self.eps)?)
    }

    /// One training step on `L + eps * P(dL/dx)`.
    pub fn step<F>(&self, target: &Target, loss_fn: &F) -> Result<Step>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        match self.method {
            PenaltyMethod::DoubleBackward => self.step_double_backward(target, loss_fn),
            PenaltyMethod::FiniteDifference { h } => {
                self.step_finite_difference(target, loss_fn, h)
            }
        }
    }

    /// One pass for the point's gradient alone (the fused ops skip the weights'), then one for every
    /// weight's gradient of `L + P` together, as JAX's `grad` of the whole objective does.
    fn step_double_backward<F>(&self, target: &Target, loss_fn: &F) -> Result<Step>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        second_order::require("gradient penalty (double backward)")?;
        let clean = target.point_gradient(loss_fn)?;
        target.check_gradient_value(&clean.gradient, self.allow_zero_gradient)?;
        let penalty = self.penalty(target, &clean.gradient)?;
        let objective = (&clean.loss + &penalty)?;
        let mut grads = target.objective_gradients(&objective, &clean)?;
        detach_all(&mut grads);
        Ok(Step {
            loss: objective.detach(),
            clean_loss: clean.loss.detach(),
            grads,
            passes: Passes {
                forward: 1,
                backward: 2,
                double_backward: 1,
            },
        })
    }

    fn step_finite_difference<F>(&self, target: &Target, loss_fn: &F, h: f64) -> Result<Step>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let clean = target.loss_and_gradient(loss_fn)?;
        target.check_gradient_value(&clean.gradient, self.allow_zero_gradient)?;
        let clean_loss = clean.loss.detach();
        let mut grads = clean.grads;
        detach_all(&mut grads);
        let g = clean.gradient.detach();
        let d = self.norm.direction(target, &g)?;
        let plus = target.loss_at(loss_fn, &(&d * h)?)?;
        let minus = target.loss_at(loss_fn, &(&d * -h)?)?;
        let difference = ((plus - minus)? * (self.eps / (2.0 * h)))?;
        let mut difference_grads = difference.backward()?;
        detach_all(&mut difference_grads);
        grads.extend(difference_grads)?;
        Ok(Step {
            loss: (&clean_loss + self.penalty(target, &g)?)?,
            clean_loss,
            grads,
            passes: Passes {
                forward: 3,
                backward: 3,
                double_backward: 0,
            },
        })
    }
}
