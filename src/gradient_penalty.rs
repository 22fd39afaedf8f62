//! Gradient penalty: train on `L + eps * P(dL/dx)`, the first-order equivalent of FGM.
//!
//! `P` is the dual penalty of a [`StepNorm`]: `||g||^2 / 2` (raw), `||g||` (L2) or `||g||_1` (sign),
//! so `GradientPenalty::new(eps).with_norm(n)` and `Fgm::new(eps).with_norm(n)` (adversarial only)
//! give the same weight gradient up to O(eps^2) (see [`crate::norm`], and eq. (11)-(16) of the seed
//! article). Two ways to get `grad_theta P`:
//!
//! * [`PenaltyMethod::DoubleBackward`]: differentiate the gradient exactly (needs second order on;
//!   guarded). Cost: one forward, one backward for `dL/dx` alone (the fused linear ops skip the weights'
//!   gradients there), and one double backward that takes every
//!   weight's gradient of `L + eps * P` together.
//! * [`PenaltyMethod::FiniteDifference`]: `grad_theta P(g) = d/dh grad_theta L(x + h d(g))` at h = 0,
//!   taken by the central difference `[grad L(x + h d) - grad L(x - h d)] / 2h` (error O(h^2)); first
//!   order only. Cost: three forward, three backward.
//!
//! Book chapter: "FGM and gradient penalty".

use crate::error::{check_non_negative, check_positive};
use crate::grads::detach_all;
use crate::method::{Batch, Method};
use crate::norm::StepNorm;
use crate::regulariser::{Penalty, Regulariser};
use crate::step::{Passes, Step};
use crate::target::Target;
use crate::{Result, Rng, second_order};
use candle_core::Tensor;

/// How the penalty's weight gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PenaltyMethod {
    /// Exact, by differentiating the gradient (second order on).
    DoubleBackward,
    /// Central difference of weight gradients along `d(g)` with step `h` (first order only).
    FiniteDifference {
        /// The difference step.
        h: f64,
    },
}

/// Gradient penalty's hyper-parameters. The defaults are the seeds' gradient penalty: weight
/// `epsilon = 1` on `||g||^2 / 2`, FGM's raw-step dual, differentiated exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientPenaltyConfig {
    /// The penalty's weight eps (>= 0).
    pub eps: f64,
    /// The geometry whose dual penalty `P` is used: raw `||g||^2 / 2`, L2 `||g||`, sign `||g||_1`.
    pub norm: StepNorm,
    /// How the penalty's weight gradient is computed.
    pub method: PenaltyMethod,
}

impl Default for GradientPenaltyConfig {
    fn default() -> Self {
        Self {
            eps: 1.0,
            norm: StepNorm::Raw,
            method: PenaltyMethod::DoubleBackward,
        }
    }
}

impl GradientPenaltyConfig {
    /// Checks every value; the one place gradient penalty's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        if let PenaltyMethod::FiniteDifference { h } = self.method {
            check_positive("h", h)?;
        }
        Ok(())
    }
}

/// Gradient penalty `eps * P(dL/dx)`.
#[derive(Clone, Copy, Debug)]
pub struct GradientPenalty {
    config: GradientPenaltyConfig,
}

impl GradientPenalty {
    /// Gradient penalty with validated settings.
    pub fn from_config(config: GradientPenaltyConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &GradientPenaltyConfig {
        &self.config
    }

    /// Weight `eps` (>= 0), the other settings at their defaults ([`GradientPenaltyConfig`]).
    pub fn new(eps: f64) -> Result<Self> {
        Self::from_config(GradientPenaltyConfig {
            eps,
            ..GradientPenaltyConfig::default()
        })
    }

    /// Sets the geometry, hence the penalty `P`.
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.config.norm = norm;
        self
    }

    /// Sets how the penalty's gradient is computed.
    pub fn with_method(self, method: PenaltyMethod) -> Result<Self> {
        Self::from_config(GradientPenaltyConfig {
            method,
            ..self.config
        })
    }

    /// `eps * P(g)` for a gradient `g` (differentiable in `g`).
    pub fn penalty(&self, target: &Target, g: &Tensor) -> Result<Tensor> {
        Ok((self.config.norm.penalty(target, g)? * self.config.eps)?)
    }

    fn step_double_backward(&self, batch: &Batch) -> Result<Step> {
        second_order::require("gradient penalty (double backward)")?;
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        let clean = target.point_gradient(&loss_fn)?;
        batch.check_gradient(&clean.gradient)?;
        let penalty = self.penalty(target, &clean.gradient)?;
        let objective = (&clean.loss + &penalty)?;
        let passes = Passes {
            forward: 1,
            backward: 2,
            double_backward: 1,
        };
        Step::from_point_objective(target, &objective, &clean, passes)
    }

    fn step_finite_difference(&self, batch: &Batch, h: f64) -> Result<Step> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        let clean = target.loss_and_gradient(&loss_fn)?;
        batch.check_gradient(&clean.gradient)?;
        let clean_loss = clean.loss.detach();
        let mut grads = clean.grads;
        detach_all(&mut grads);
        let g = clean.gradient.detach();
        let d = self.config.norm.direction(target, &g)?;
        let plus = target.loss_at(&loss_fn, &(&d * h)?)?;
        let minus = target.loss_at(&loss_fn, &(&d * -h)?)?;
        let difference = ((plus - minus)? * (self.config.eps / (2.0 * h)))?;
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

impl Method for GradientPenalty {
    /// One step on `L + eps * P(dL/dx)`.
    fn step(&mut self, batch: &Batch, _rng: &mut Rng) -> Result<Step> {
        match self.config.method {
            PenaltyMethod::DoubleBackward => self.step_double_backward(batch),
            PenaltyMethod::FiniteDifference { h } => self.step_finite_difference(batch, h),
        }
    }
}

impl Regulariser for GradientPenalty {
    /// `eps * P(dL/dx)` with its graph (second order on; the exact form whatever the method set).
    fn penalty(&self, batch: &Batch, _rng: &mut Rng) -> Result<Penalty> {
        second_order::require("gradient penalty (double backward)")?;
        let target = batch.target();
        // The weights' gradients come from the penalty's own backward pass: this pass takes the
        // point's gradient only.
        let clean = target.point_gradient(&|p: &Tensor| batch.loss_at(p))?;
        batch.check_gradient(&clean.gradient)?;
        Ok(Penalty {
            value: GradientPenalty::penalty(self, target, &clean.gradient)?,
            // The gradient's pass, and the double backward through it.
            passes: Passes {
                forward: 1,
                backward: 2,
                double_backward: 1,
            },
        })
    }
}
