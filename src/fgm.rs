//! FGM and FGSM: one gradient-ascent step on the perturbation, then train at the perturbed point.
//!
//! The step is `delta = eps * d(g)` with `g = dL/dx` and `d` the direction of a [`StepNorm`]: raw
//! `eps * g`, L2-normalised `eps * g / ||g||` (per example or per batch), or sign `eps * sign(g)` (FGSM).
//! `delta` is detached: the weights' gradient is taken at the perturbed point with `delta` held
//! constant, which to first order in eps is gradient penalty (see [`crate::norm`]). Two training
//! objectives, as the seeds use them: the adversarial loss alone, or clean + adversarial.
//! Cost: two forward and two backward passes per step. Book chapter: "FGM and gradient penalty".

use crate::ball::ValidRange;
use crate::error::check_non_negative;
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::step::{Objective, Passes, Step, combine};
use crate::target::Target;
use crate::{Result, Rng};
use candle_core::Tensor;

/// FGM's hyper-parameters. The defaults are the seeds' FGM on the embedding layer (and its common
/// PyTorch form): `epsilon = 1`, the gradient normalised over the whole tensor, the adversarial loss
/// added to the clean one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FgmConfig {
    /// The step's size eps (>= 0).
    pub eps: f64,
    /// The step's geometry: raw, L2 (per example or per batch) or sign (FGSM).
    pub norm: StepNorm,
    /// Adversarial loss alone, or clean + adversarial.
    pub objective: Objective,
    /// The perturbed point's valid range (pixels: [0, 1], as the seeds' MNIST FGSM clamps);
    /// `None`: unbounded.
    pub range: Option<ValidRange>,
}

impl Default for FgmConfig {
    fn default() -> Self {
        Self {
            eps: 1.0,
            norm: StepNorm::L2(Scope::PerBatch),
            objective: Objective::CleanPlusAdversarial,
            range: None,
        }
    }
}

impl FgmConfig {
    /// Checks every value; the one place FGM's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        self.range
            .map_or(Ok(()), |r| ValidRange::new(r.lo, r.hi).map(drop))
    }
}

/// The fast gradient method.
#[derive(Clone, Copy, Debug)]
pub struct Fgm {
    config: FgmConfig,
}

impl Fgm {
    /// FGM with validated settings.
    pub fn from_config(config: FgmConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &FgmConfig {
        &self.config
    }

    /// FGM with step size `eps` (>= 0), the other settings at their defaults ([`FgmConfig`]).
    pub fn new(eps: f64) -> Result<Self> {
        Self::from_config(FgmConfig {
            eps,
            ..FgmConfig::default()
        })
    }

    /// FGSM: the sign step `eps * sign(g)`.
    pub fn fgsm(eps: f64) -> Result<Self> {
        Ok(Self::new(eps)?.with_norm(StepNorm::Sign))
    }

    /// Sets the step geometry.
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.config.norm = norm;
        self
    }

    /// Sets the training objective.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.config.objective = objective;
        self
    }

    /// The step size.
    pub fn eps(&self) -> f64 {
        self.config.eps
    }

    /// The step geometry.
    pub fn norm(&self) -> StepNorm {
        self.config.norm
    }

    /// Keeps the perturbed point in `[lo, hi]` (pixels: `(0.0, 1.0)`).
    pub fn with_range(mut self, lo: f64, hi: f64) -> Result<Self> {
        self.config.range = Some(ValidRange::new(lo, hi)?);
        Ok(self)
    }

    /// The perturbation `eps * d(g)` for a gradient `g` w.r.t. the target's point (detached); zero
    /// where `g` is zero; cut to the valid range when one is set.
    pub fn perturbation(&self, target: &Target, g: &Tensor) -> Result<Tensor> {
        let delta = (self.config.norm.direction(target, g)? * self.config.eps)?;
        match self.config.range {
            Some(range) => range.cut(target, &delta),
            None => Ok(delta),
        }
    }
}

impl Method for Fgm {
    /// Clean forward-backward, the perturbation, adversarial forward-backward.
    fn step(&mut self, batch: &Batch, _rng: &mut Rng) -> Result<Step> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        // First order only: the clean pass is reduced to values at once (with second order on, candle
        // would otherwise keep its graph alive through the adversarial pass).
        let clean = target.clean_pass(&loss_fn)?;
        batch.check_gradient(&clean.gradient)?;
        let delta = self.perturbation(target, &clean.gradient)?;
        let (adversarial, adversarial_grads) = target.gradients_at(&loss_fn, Some(&delta))?;
        let passes = Passes {
            forward: 2,
            backward: 2,
            double_backward: 0,
        };
        combine(
            self.config.objective,
            clean,
            &adversarial,
            adversarial_grads,
            passes,
        )
    }
}
