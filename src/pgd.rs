//! PGD-K (Madry et al.): K projected gradient-ascent steps on the perturbation, then train at the end.
//!
//! `delta_{k+1} = Pi_ball(delta_k + alpha * d(g_k))` with `d` the step direction of a [`StepNorm`]
//! (normalised for an L2 ball, sign for an L-infinity ball), from a zero or a random start. The weights
//! are trained at the last iterate, plus the clean gradient as the seeds' PyTorch version does
//! ([`Objective::CleanPlusAdversarial`]). With a zero start the clean pass supplies the first ascent
//! gradient, so PGD-K costs K + 1 forward-backward passes, and PGD-1 with `alpha = eps` is FGM exactly.
//! Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT".

use crate::ball::{Ball, ValidRange};
use crate::error::{check_count, check_non_negative, check_positive};
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::step::{CleanPass, Objective, Passes, Step, combine};
use crate::target::Target;
use crate::{Result, Rng};
use candle_core::Tensor;

/// Where the ascent starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// `delta_0 = 0`.
    Zero,
    /// `delta_0` uniform in the ball (Madry et al.).
    Random,
}

/// PGD's hyper-parameters. The defaults are the embedding-layer PGD of the seeds' code (its common
/// PyTorch form): radius `epsilon = 1`, step `alpha = 0.3`, `K = 3` steps, from zero, the adversarial
/// loss added to the clean one. Madry et al. (2018) start at a random point of the ball
/// ([`Start::Random`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgdConfig {
    /// The ball's radius eps (>= 0).
    pub eps: f64,
    /// The ascent step's size alpha (> 0).
    pub alpha: f64,
    /// The number of ascent steps K (>= 1).
    pub steps: usize,
    /// The step geometry and its ball: L2 (per example or per batch) or sign (L-infinity).
    pub norm: StepNorm,
    /// Zero or random start.
    pub start: Start,
    /// Adversarial loss alone, or clean + adversarial.
    pub objective: Objective,
    /// The perturbed point's valid range (pixels: [0, 1]); `None`: unbounded.
    pub range: Option<ValidRange>,
}

impl Default for PgdConfig {
    fn default() -> Self {
        Self {
            eps: 1.0,
            alpha: 0.3,
            steps: 3,
            norm: StepNorm::L2(Scope::PerBatch),
            start: Start::Zero,
            objective: Objective::CleanPlusAdversarial,
            range: None,
        }
    }
}

impl PgdConfig {
    /// Checks every value; the one place PGD's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        check_positive("alpha", self.alpha)?;
        check_count("steps", self.steps)?;
        self.range
            .map_or(Ok(()), |r| ValidRange::new(r.lo, r.hi).map(drop))
    }
}

/// Projected gradient descent on the perturbation.
#[derive(Clone, Copy, Debug)]
pub struct Pgd {
    config: PgdConfig,
}

impl Pgd {
    /// PGD with validated settings.
    pub fn from_config(config: PgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &PgdConfig {
        &self.config
    }

    /// `steps` ascent steps of size `alpha` in a ball of radius `eps`, the other settings at their
    /// defaults ([`PgdConfig`]: L2 per batch, zero start, clean + adversarial).
    pub fn new(eps: f64, alpha: f64, steps: usize) -> Result<Self> {
        Self::from_config(PgdConfig {
            eps,
            alpha,
            steps,
            ..PgdConfig::default()
        })
    }

    /// Step geometry: `L2(scope)` ascends along `g / ||g||` in an L2 ball, `Sign` along `sign(g)` in an
    /// L-infinity ball, `Raw` along `g` in an L2 ball per batch.
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.config.norm = norm;
        self
    }

    /// Zero or random start.
    pub fn with_start(mut self, start: Start) -> Self {
        self.config.start = start;
        self
    }

    /// Training objective.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.config.objective = objective;
        self
    }

    /// Keeps the perturbed point in `[lo, hi]` after every step (pixels: `(0.0, 1.0)`).
    pub fn with_range(mut self, lo: f64, hi: f64) -> Result<Self> {
        self.config.range = Some(ValidRange::new(lo, hi)?);
        Ok(self)
    }

    /// The ball's projection, then the valid range's cut.
    fn constrain(&self, target: &Target, delta: &Tensor) -> Result<Tensor> {
        let projected = self.ball()?.project(target, delta)?;
        match self.config.range {
            Some(range) => range.cut(target, &projected),
            None => Ok(projected),
        }
    }

    /// The ball the iterates stay in.
    pub fn ball(&self) -> Result<Ball> {
        Ball::for_norm(self.config.norm, self.config.eps)
    }

    /// One ascent step from `delta` with gradient `g`.
    pub fn ascend(&self, target: &Target, delta: &Tensor, g: &Tensor) -> Result<Tensor> {
        let moved = (delta + (self.config.norm.direction(target, g)? * self.config.alpha)?)?;
        self.constrain(target, &moved)
    }

    /// The attack: the final perturbation, the clean pass, and the number of ascent passes beyond the
    /// clean one. The clean gradient is checked as `batch` says.
    fn attack_with_clean(
        &self,
        batch: &Batch,
        rng: &mut Rng,
    ) -> Result<(Tensor, CleanPass, usize)> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        let clean = target.clean_pass(&loss_fn)?;
        batch.check_gradient(&clean.gradient)?;
        let (mut delta, mut extra) = match self.config.start {
            Start::Zero => {
                let zero = clean.gradient.zeros_like()?;
                (self.ascend(target, &zero, &clean.gradient)?, 0)
            }
            Start::Random => {
                let start = self.ball()?.random_point(target, rng)?;
                (self.constrain(target, &start)?, 0)
            }
        };
        let first_from_clean = self.config.start == Start::Zero;
        let remaining = if first_from_clean {
            self.config.steps - 1
        } else {
            self.config.steps
        };
        for _ in 0..remaining {
            let at = target.point_gradient_at(&loss_fn, &delta)?;
            delta = self.ascend(target, &delta, &at.gradient.detach())?;
            extra += 1;
        }
        Ok((delta, clean, extra))
    }

    /// The attack alone (for evaluating robustness): the final perturbation, and the number of ascent
    /// passes beyond the clean one.
    pub fn attack(&self, batch: &Batch, rng: &mut Rng) -> Result<(Tensor, usize)> {
        let (delta, _, extra) = self.attack_with_clean(batch, rng)?;
        Ok((delta, extra))
    }
}

impl Method for Pgd {
    /// The attack, then one forward-backward pass at the final perturbation.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let (delta, clean, extra) = self.attack_with_clean(batch, rng)?;
        let loss_fn = |p: &Tensor| batch.loss_at(p);
        let (adversarial, adversarial_grads) =
            batch.target().gradients_at(&loss_fn, Some(&delta))?;
        let passes = Passes {
            forward: 2 + extra,
            backward: 2 + extra,
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
