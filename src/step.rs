//! What a method returns from one training step: the objective, its gradients, and what it cost.
//!
//! The library does not own the training loop: a method computes a [`Step`] and the user hands
//! `step.grads` to their own optimiser (`candle_nn::Optimizer::step(&step.grads)`).

use crate::Result;
use crate::grads::{detach_all, scale_all};
use crate::target::PointGradient;

/// Which loss a method that trains at a perturbed point (FGM, PGD) trains the weights on.
///
/// With the clean term, the step's gradient is that of `L(x) + L(x + delta)`, which to first order in
/// eps is `2 L + eps P(g)`: under a scale-free optimiser (Adam) the same as `L + (eps / 2) P(g)`, half
/// the relative penalty weight of the adversarial loss alone (book chapter "FGM and gradient penalty").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// `L(x + delta)` only.
    AdversarialOnly,
    /// `L(x) + L(x + delta)`: the clean gradient plus the adversarial one.
    CleanPlusAdversarial,
}
use candle_core::Tensor;
use candle_core::backprop::GradStore;

/// How many passes a step spent. A backward pass through a gradient's graph (double backward) counts
/// once in `backward` and once in `double_backward`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passes {
    /// Forward passes of the model.
    pub forward: usize,
    /// Backward passes.
    pub backward: usize,
    /// Of those, backward passes that differentiate a gradient (second or third order).
    pub double_backward: usize,
}

/// One step of a method.
#[derive(Debug)]
pub struct Step {
    /// The objective whose gradients are in `grads` (detached scalar).
    pub loss: Tensor,
    /// The loss at the unperturbed point (detached scalar), for logging.
    pub clean_loss: Tensor,
    /// Gradients of `loss` for every variable, ready for an optimiser.
    pub grads: GradStore,
    /// The passes this step cost.
    pub passes: Passes,
}

/// The clean pass reduced to values (loss and gradients, detached) plus the gradient with respect to the
/// point, so that no graph of the clean pass outlives it.
pub(crate) struct CleanPass {
    /// The clean loss (detached).
    pub(crate) loss: Tensor,
    /// Every variable's gradient of the clean loss (detached).
    pub(crate) grads: GradStore,
    /// The gradient with respect to the point (detached).
    pub(crate) gradient: Tensor,
}

impl From<PointGradient> for CleanPass {
    fn from(pass: PointGradient) -> Self {
        let mut grads = pass.grads;
        detach_all(&mut grads);
        Self {
            loss: pass.loss.detach(),
            grads,
            gradient: pass.gradient.detach(),
        }
    }
}

/// The step of a method that trains at a perturbed point: the adversarial loss alone, or clean plus
/// adversarial (gradients summed), as `objective` says.
pub(crate) fn combine(
    objective: Objective,
    clean: CleanPass,
    adversarial: &Tensor,
    mut adversarial_grads: GradStore,
    passes: Passes,
) -> Result<Step> {
    detach_all(&mut adversarial_grads);
    let adversarial = adversarial.detach();
    Ok(match objective {
        Objective::AdversarialOnly => Step {
            loss: adversarial,
            clean_loss: clean.loss,
            grads: adversarial_grads,
            passes,
        },
        Objective::CleanPlusAdversarial => {
            let mut grads = clean.grads;
            grads.extend(adversarial_grads)?;
            Step {
                loss: (&clean.loss + adversarial)?,
                clean_loss: clean.loss,
                grads,
                passes,
            }
        }
    })
}

/// Plain training as a [`Step`]: one forward and one backward pass at the unperturbed point. The
/// baseline every method is compared with ([`crate::Plain`]), and FreeLB's warm-up.
pub(crate) fn plain<F>(target: &crate::target::Target, loss_fn: &F) -> Result<Step>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    let (loss, grads) = target.gradients_at(loss_fn, None)?;
    Ok(Step {
        loss: loss.clone(),
        clean_loss: loss,
        grads,
        passes: Passes {
            forward: 1,
            backward: 1,
            double_backward: 0,
        },
    })
}

impl Step {
    /// The step that trains on `objective` (its gradients, detached), reporting `clean` as the clean
    /// loss.
    pub(crate) fn from_objective(
        objective: &Tensor,
        clean: &Tensor,
        passes: Passes,
    ) -> Result<Step> {
        let mut grads = crate::fused::backward_first_order(objective)?;
        detach_all(&mut grads);
        Ok(Step {
            loss: objective.detach(),
            clean_loss: clean.detach(),
            grads,
            passes,
        })
    }

    /// The step that trains on `objective`, built from `clean`'s loss and point gradient (with their
    /// graphs): every weight's gradient in one backward pass through the double-backward graph
    /// ([`Target::objective_gradients`](crate::Target)), detached. Gradient penalty, the Laplacian
    /// and the local-linearity regulariser end this way.
    pub(crate) fn from_point_objective(
        target: &crate::Target,
        objective: &Tensor,
        clean: &PointGradient,
        passes: Passes,
    ) -> Result<Step> {
        let mut grads = target.objective_gradients(objective, clean)?;
        detach_all(&mut grads);
        Ok(Step {
            loss: objective.detach(),
            clean_loss: clean.loss.detach(),
            grads,
            passes,
        })
    }

    /// The same step with its loss and gradients multiplied by `factor` (e.g. 1 / accumulation steps).
    pub fn scaled(mut self, factor: f64) -> Result<Step> {
        crate::error::check_non_negative("factor", factor)?;
        scale_all(&mut self.grads, factor)?;
        Ok(Step {
            loss: (self.loss * factor)?,
            clean_loss: (self.clean_loss * factor)?,
            grads: self.grads,
            passes: self.passes,
        })
    }
}

/// Gradient accumulation over micro-batches: add each micro-batch's step scaled by 1 / `micro_batches`
/// and take the sum when the batch is complete.
pub struct Accumulator {
    micro_batches: usize,
    sum: Option<Step>,
    added: usize,
}

impl Accumulator {
    /// An accumulator for `micro_batches` steps per optimiser update.
    pub fn new(micro_batches: usize) -> Result<Self> {
        crate::error::check_count("micro_batches", micro_batches)?;
        Ok(Self {
            micro_batches,
            sum: None,
            added: 0,
        })
    }

    /// Adds one micro-batch's step, scaled by 1 / `micro_batches`. Returns the accumulated step once
    /// `micro_batches` steps are in (and starts over), `None` before.
    pub fn add(&mut self, step: Step) -> Result<Option<Step>> {
        let step = step.scaled(1.0 / self.micro_batches as f64)?;
        self.sum = Some(match self.sum.take() {
            None => step,
            Some(mut acc) => {
                acc.grads.extend(step.grads)?;
                Step {
                    loss: (acc.loss + step.loss)?,
                    clean_loss: (acc.clean_loss + step.clean_loss)?,
                    grads: acc.grads,
                    passes: Passes {
                        forward: acc.passes.forward + step.passes.forward,
                        backward: acc.passes.backward + step.passes.backward,
                        double_backward: acc.passes.double_backward + step.passes.double_backward,
                    },
                }
            }
        });
        self.added += 1;
        if self.added == self.micro_batches {
            self.added = 0;
            Ok(self.sum.take())
        } else {
            Ok(None)
        }
    }
}
