//! Regularisers that compose with any method: `method.with(regulariser)` trains on the method's
//! objective plus the penalty, as optax's `chain` composes gradient transformations.
//!
//! A [`Regulariser`] returns a scalar penalty on a [`Batch`], differentiable in the weights. The
//! composed step, [`Regularised`], is the method's step with the penalty's value added to its loss and
//! the penalty's weight gradients added to its `GradStore`: the gradient of a sum is the sum of the
//! gradients, so the composition is exact (checked in `tests/suite/regulariser.rs`). Penalties of
//! this crate: gradient penalty ([`crate::GradientPenalty`]), the Laplacian ([`crate::Laplacian`]),
//! target shift ([`crate::TargetShift`]), SMART's and VAT's smoothness ([`crate::Smart`],
//! [`crate::Vat`]) and [`LabelSmoothing`]; several chain: `Fgm::new(0.5)?.with(vat).with(smoothing)`.
//! Book chapter: "Using advtrain in your own loop".

use crate::divergence::cross_entropy_uniform;
use crate::grads::detach_all;
use crate::method::{Batch, Method};
use crate::step::{Passes, Step};
use crate::{Error, Result, Rng};
use candle_core::Tensor;

/// A penalty's value and what computing it cost.
pub struct Penalty {
    /// The penalty (a scalar, with its graph: differentiable in the weights).
    pub value: Tensor,
    /// The passes it costs, including the one backward pass through `value` that the composed step
    /// takes.
    pub passes: Passes,
}

/// A penalty added to a training objective.
pub trait Regulariser {
    /// The penalty on `batch`.
    fn penalty(&self, batch: &Batch, rng: &mut Rng) -> Result<Penalty>;
}

/// A method whose objective is extended by a regulariser: `method.with(regulariser)`.
pub struct Regularised<M, R> {
    method: M,
    regulariser: R,
}

/// Adds [`Regularised`] composition to every method.
pub trait WithRegulariser: Method + Sized {
    /// This method's objective plus `regulariser`'s penalty.
    fn with<R: Regulariser>(self, regulariser: R) -> Regularised<Self, R> {
        Regularised {
            method: self,
            regulariser,
        }
    }
}

impl<M: Method> WithRegulariser for M {}

impl<M, R> Regularised<M, R> {
    /// The method and the regulariser.
    pub fn parts(&self) -> (&M, &R) {
        (&self.method, &self.regulariser)
    }
}

impl<M: Method, R: Regulariser> Method for Regularised<M, R> {
    /// The method's step, then the penalty: losses added, gradients added, passes added. The clean
    /// loss is the method's.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let step = self.method.step(batch, rng)?;
        // The method has checked the point's gradient: one check per step.
        let penalty = self.regulariser.penalty(&batch.unchecked(), rng)?;
        check_scalar(&penalty.value)?;
        let mut grads = crate::fused::backward_first_order(&penalty.value)?;
        detach_all(&mut grads);
        let mut combined = step.grads;
        combined.extend(grads)?;
        let (a, b) = (step.passes, penalty.passes);
        Ok(Step {
            loss: (step.loss + penalty.value.detach().reshape(())?)?,
            clean_loss: step.clean_loss,
            grads: combined,
            passes: Passes {
                forward: a.forward + b.forward,
                backward: a.backward + b.backward,
                double_backward: a.double_backward + b.double_backward,
            },
        })
    }

    fn replays(&self) -> usize {
        self.method.replays()
    }
}

fn check_scalar(value: &Tensor) -> Result<()> {
    if value.elem_count() != 1 {
        return Err(Error::ShapeMismatch {
            name: "penalty",
            expected: "a scalar penalty".into(),
            got: value.dims().to_vec(),
        });
    }
    Ok(())
}

/// Label smoothing as a penalty: `smoothing * (H(u, p) - task)`, with `H(u, p)` the cross-entropy of the
/// model's output distribution against the uniform one. When the task loss is the cross-entropy
/// against the labels, `task + penalty` is the cross-entropy against the smoothed labels
/// `(1 - smoothing) y + smoothing / k` ([`crate::noise::label_smoothing`]): the expectation of label noise
/// (book chapter "Noise"). Needs the batch's outputs (logits).
#[derive(Clone, Copy, Debug)]
pub struct LabelSmoothing {
    smoothing: f64,
}

impl LabelSmoothing {
    /// Smoothing probability `smoothing` in [0, 1] (0.1 in Szegedy et al., 2016).
    pub fn new(smoothing: f64) -> Result<Self> {
        crate::noise::check_smoothing(smoothing)?;
        Ok(Self { smoothing })
    }
}

impl Default for LabelSmoothing {
    fn default() -> Self {
        Self { smoothing: 0.1 }
    }
}

impl Regulariser for LabelSmoothing {
    fn penalty(&self, batch: &Batch, _rng: &mut Rng) -> Result<Penalty> {
        let (outputs, task) = batch.outputs_and_task("label smoothing")?;
        let logits = outputs(batch.target().point())?;
        let uniform = cross_entropy_uniform(&logits)?;
        let value = ((uniform - task(&logits)?.reshape(())?)? * self.smoothing)?;
        Ok(Penalty {
            value,
            passes: Passes {
                forward: 1,
                backward: 1,
                double_backward: 0,
            },
        })
    }
}
