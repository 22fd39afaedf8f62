//! The local-linearity regulariser (Qin et al. 2019, "Adversarial robustness through local
//! linearization"), one of the seeds' methods: how far the loss departs from its tangent plane
//! within the ball,
//!
//! `gamma(eps, x) = max_{delta in B(eps)} |L(x + delta) - L(x) - delta . grad_x L(x)|`,
//!
//! trained as `L(x) + lambda * gamma + mu * |delta* . grad_x L(x)|`, with `delta*` the maximiser. If
//! the gap is small everywhere in the ball, the loss there is its first-order Taylor expansion, and
//! the worst case in the ball is the linear term, which the `mu` term bounds: a small gap and a small
//! linear term together bound `max L(x + delta) - L(x)`, what PGD training attacks, at the cost of a
//! first-order attack on the gap.
//!
//! The inner maximisation is projected ascent on the gap from a random point of the ball; its
//! gradient in `delta` is `sign(gap) (grad L(x + delta) - grad L(x))`, first order only. The training
//! objective differentiates `delta* . grad_x L(x)` in the weights: a double backward, so second order
//! must be on. One departure from the paper: the gap is that of the batch's loss (the mean over
//! examples), `|mean_i gap_i|`, not the mean of the examples' `|gap_i|`; the two agree when every
//! example's gap has the same sign. Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT", section
//! "Local linearity".

use crate::ball::Ball;
use crate::error::{check_count, check_non_negative, check_positive};
use crate::method::{Batch, Method};
use crate::norm::StepNorm;
use crate::second_order;
use crate::step::{Passes, Step};
use crate::{Result, Rng};
use candle_core::Tensor;

/// The local-linearity regulariser's hyper-parameters. `lambda` = 4 and `mu` = 3 are the weights
/// Qin et al. (2019) list for their runs, and eps = 8/255 in the L-infinity ball (pixels in [0, 1])
/// their CIFAR-10 radius (taken from the paper, not from their code); the inner maximisation's 10
/// sign steps of eps/4 are this crate's choice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalLinearityConfig {
    /// The ball's radius eps (>= 0).
    pub eps: f64,
    /// Ascent steps on the gap (>= 1).
    pub steps: usize,
    /// The ascent step's size (> 0).
    pub step_size: f64,
    /// The gap's weight lambda (>= 0).
    pub lambda: f64,
    /// The linear term's weight mu (>= 0).
    pub mu: f64,
    /// The ball and step geometry (L2 for `L2`, L-infinity for `Sign`).
    pub norm: StepNorm,
}

impl Default for LocalLinearityConfig {
    fn default() -> Self {
        let eps = 8.0 / 255.0;
        Self {
            eps,
            steps: 10,
            step_size: eps / 4.0,
            lambda: 4.0,
            mu: 3.0,
            norm: StepNorm::Sign,
        }
    }
}

impl LocalLinearityConfig {
    /// Checks every value; the one place the regulariser's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        check_count("steps", self.steps)?;
        check_positive("step_size", self.step_size)?;
        check_non_negative("lambda", self.lambda)?;
        check_non_negative("mu", self.mu)?;
        Ball::for_norm(self.norm, self.eps).map(|_| ())
    }
}

/// The local-linearity regulariser as a training method.
#[derive(Clone, Debug)]
pub struct LocalLinearity {
    config: LocalLinearityConfig,
}

impl LocalLinearity {
    /// From validated settings.
    pub fn from_config(config: LocalLinearityConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Radius `eps`, steps of `eps / 4`, the other settings at their defaults.
    pub fn new(eps: f64) -> Result<Self> {
        // The step eps / 4 must be positive: a zero radius needs a step size of its own.
        check_positive("eps", eps)?;
        Self::from_config(LocalLinearityConfig {
            eps,
            step_size: eps / 4.0,
            ..LocalLinearityConfig::default()
        })
    }

    /// The settings.
    pub fn config(&self) -> &LocalLinearityConfig {
        &self.config
    }

    /// Another ball geometry (and step direction).
    pub fn with_norm(self, norm: StepNorm) -> Result<Self> {
        Self::from_config(LocalLinearityConfig {
            norm,
            ..self.config
        })
    }

    /// Another number of ascent steps and step size.
    pub fn with_steps(self, steps: usize, step_size: f64) -> Result<Self> {
        Self::from_config(LocalLinearityConfig {
            steps,
            step_size,
            ..self.config
        })
    }

    /// Other weights for the gap and the linear term.
    pub fn with_weights(self, lambda: f64, mu: f64) -> Result<Self> {
        Self::from_config(LocalLinearityConfig {
            lambda,
            mu,
            ..self.config
        })
    }

    /// The signed gap `L(x + delta) - L(x) - delta . g` from the loss at `x + delta`, the clean loss
    /// and the clean gradient `g`.
    fn signed_gap(at: &Tensor, clean: &Tensor, delta: &Tensor, g: &Tensor) -> Result<Tensor> {
        let linear = (delta * g)?.sum_all()?;
        Ok(((at - clean)? - linear)?)
    }

    /// The gap `|L(x + delta) - L(x) - delta . grad L(x)|` at `delta` (values only).
    pub fn gap(&self, batch: &Batch, delta: &Tensor) -> Result<f64> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        // The point's gradient only: no weight gradient is needed for a value.
        let clean = target.point_gradient(&loss_fn)?;
        let at = target.loss_at(&loss_fn, delta)?;
        let gap = Self::signed_gap(&at, &clean.loss, delta, &clean.gradient)?;
        Ok(gap
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?
            .abs())
    }

    /// The perturbation that maximises the gap: a random point of the ball, then `steps` projected
    /// ascent steps along `sign(gap) (grad L(x + delta) - grad L(x))`. The clean gradient is checked
    /// as `batch` says.
    pub fn attack(&self, batch: &Batch, rng: &mut Rng) -> Result<Tensor> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        let clean = target.point_gradient(&loss_fn)?;
        batch.check_gradient(&clean.gradient)?;
        self.attack_from(batch, &clean.loss.detach(), &clean.gradient.detach(), rng)
    }

    fn attack_from(
        &self,
        batch: &Batch,
        clean_loss: &Tensor,
        g: &Tensor,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        let ball = Ball::for_norm(self.config.norm, self.config.eps)?;
        let mut delta = ball.random_point(target, rng)?;
        for _ in 0..self.config.steps {
            let at = target.point_gradient_at(&loss_fn, &delta)?;
            let gap = Self::signed_gap(&at.loss.detach(), clean_loss, &delta, g)?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            let sign = if gap < 0.0 { -1.0 } else { 1.0 };
            let ascent = ((at.gradient.detach() - g)? * sign)?;
            let moved =
                (&delta + (self.config.norm.direction(target, &ascent)? * self.config.step_size)?)?;
            delta = ball.project(target, &moved)?;
        }
        Ok(delta)
    }

    /// The training objective at a given perturbation, with its graph (second order on):
    /// `L(x) + lambda |L(x + delta) - L(x) - delta . grad L(x)| + mu |delta . grad L(x)|`.
    pub fn objective_at(&self, batch: &Batch, delta: &Tensor) -> Result<Tensor> {
        second_order::require("the local-linearity regulariser")?;
        let clean = batch
            .target()
            .point_gradient(&|p: &Tensor| batch.loss_at(p))?;
        batch.check_gradient(&clean.gradient)?;
        self.objective_from(batch, &clean, delta)
    }

    /// The objective from the clean pass (its loss and gradient with their graphs) and `delta`.
    fn objective_from(
        &self,
        batch: &Batch,
        clean: &crate::target::PointGradient,
        delta: &Tensor,
    ) -> Result<Tensor> {
        let delta = delta.detach();
        let at = batch
            .target()
            .loss_at(&|p: &Tensor| batch.loss_at(p), &delta)?;
        let linear = (&delta * &clean.gradient)?.sum_all()?;
        let gap = ((&at - &clean.loss)? - &linear)?.abs()?;
        Ok(((&clean.loss + (gap * self.config.lambda)?)? + (linear.abs()? * self.config.mu)?)?)
    }
}

impl Method for LocalLinearity {
    /// The attack on the gap, then one step on the objective at its perturbation.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        second_order::require("the local-linearity regulariser")?;
        let target = batch.target();
        // One clean pass: its values start the attack, its graph enters the objective.
        let clean = target.point_gradient(&|p: &Tensor| batch.loss_at(p))?;
        batch.check_gradient(&clean.gradient)?;
        let delta = self.attack_from(batch, &clean.loss.detach(), &clean.gradient.detach(), rng)?;
        let objective = self.objective_from(batch, &clean, &delta)?;
        // The clean pass, the attack's steps, the perturbed pass; the objective's backward.
        let passes = Passes {
            forward: 2 + self.config.steps,
            backward: 2 + self.config.steps,
            double_backward: 1,
        };
        Step::from_point_objective(target, &objective, &clean, passes)
    }
}
