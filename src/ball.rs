//! The perturbation set: projection onto an eps-ball (L2 per example or per batch, or L-infinity).
//!
//! Multi-step attacks (PGD, FreeAT, FreeLB, SMART) keep their perturbation inside
//! `Omega = {delta : ||delta|| <= eps}`, the constraint of the min-max problem (eq. (10) of the seed
//! article on generalisation). An L2 ball is paired with the normalised step `g / ||g||`, the
//! L-infinity ball with the sign step. [`ValidRange`] keeps the perturbed point itself in its valid
//! range (pixels in [0, 1]), as image attacks do. Book chapter: "Min-max".

use crate::error::check_non_negative;
use crate::norm::{Scope, StepNorm, squared_norms};
use crate::target::Target;
use crate::{Result, Rng};
use candle_core::Tensor;

/// A ball of radius `radius` around the unperturbed point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ball {
    /// `||delta||_2 <= radius`, per example or for the whole batch.
    L2 {
        /// The radius (>= 0).
        radius: f64,
        /// Which entries share a norm.
        scope: Scope,
    },
    /// `|delta_i| <= radius` for every entry.
    Linf {
        /// The radius (>= 0).
        radius: f64,
    },
}

impl Ball {
    /// The ball that goes with a step geometry: L2 for `L2(scope)` (and `Raw`, per batch), L-infinity
    /// for `Sign`.
    pub fn for_norm(norm: StepNorm, radius: f64) -> Result<Self> {
        check_non_negative("eps", radius)?;
        Ok(match norm {
            StepNorm::L2(scope) => Ball::L2 { radius, scope },
            StepNorm::Raw => Ball::L2 {
                radius,
                scope: Scope::PerBatch,
            },
            StepNorm::Sign => Ball::Linf { radius },
        })
    }

    /// The radius.
    pub fn radius(&self) -> f64 {
        match *self {
            Ball::L2 { radius, .. } | Ball::Linf { radius } => radius,
        }
    }

    /// The nearest point of the ball: `delta * min(1, r / ||delta||)` for L2, clamping for L-infinity.
    pub fn project(&self, target: &Target, delta: &Tensor) -> Result<Tensor> {
        crate::error::check_non_negative("radius", self.radius())?;
        target.check_delta(delta)?;
        let projected = match *self {
            Ball::Linf { radius } => delta.clamp(-radius, radius)?,
            // The ball of radius 0 is the point itself (and r / ||delta|| would be 0 / 0).
            Ball::L2 { radius: 0.0, .. } => delta.zeros_like()?,
            Ball::L2 { radius, scope } => {
                let norms = squared_norms(target, delta, scope)?.sqrt()?;
                // min(1, r / ||delta||), written so that a zero delta stays zero.
                let factor = (norms.clamp(radius, f64::INFINITY)?.recip()? * radius)?;
                delta.broadcast_mul(&factor)?
            }
        };
        target.apply_mask(&projected)
    }

    /// A random start inside the ball: uniform entries in `[-r, r)`, masked, then projected.
    pub fn random_point(&self, target: &Target, rng: &mut Rng) -> Result<Tensor> {
        let p = target.point();
        let r = self.radius();
        if r == 0.0 {
            return Ok(p.zeros_like()?);
        }
        let u = rng.uniform(-r, r, p.shape(), p.dtype(), p.device())?;
        self.project(target, &target.apply_mask(&u)?)
    }
}

/// The valid range `[lo, hi]` of the perturbed point's entries (pixels in [0, 1]). Image attacks
/// cut the perturbation so that `point + delta` stays a valid image, after the ball's projection.
/// For a point inside the range the cut shrinks every entry of delta towards zero, so the result
/// stays in the ball.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValidRange {
    /// The smallest valid value.
    pub lo: f64,
    /// The largest valid value.
    pub hi: f64,
}

impl ValidRange {
    /// `[lo, hi]`, finite with `lo < hi`.
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(crate::Error::InvalidArgument {
                name: "range",
                reason: format!("[{lo}, {hi}] is not a finite interval with lo < hi"),
                fix: "pass the inputs' valid range, e.g. (0.0, 1.0) for pixels".into(),
            });
        }
        Ok(Self { lo, hi })
    }

    /// `clamp(point + delta, lo, hi) - point`, masked.
    pub fn cut(&self, target: &Target, delta: &Tensor) -> Result<Tensor> {
        let point = target.point();
        let inside = (point + delta)?.clamp(self.lo, self.hi)?;
        target.apply_mask(&(inside - point)?)
    }
}
