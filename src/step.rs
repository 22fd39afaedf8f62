//! What a method returns from one training step: the objective, its gradients, and what it cost.
//!
//! The library does not own the training loop: a method computes a [`Step`] and the user hands
//! `step.grads` to their own optimiser (`candle_nn::Optimizer::step(&step.grads)`).

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
