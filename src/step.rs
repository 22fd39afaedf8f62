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

/// Detaches every gradient in `grads`. First-order methods call it as soon as a backward pass returns:
/// with second order on, candle keeps each gradient's graph (and every intermediate tensor it
/// references) alive until the store is dropped, which a first-order step never needs.
pub fn detach_all(grads: &mut GradStore) {
    let ids: Vec<_> = grads.get_ids().copied().collect();
    for id in ids {
        if let Some(g) = grads.get_id(id) {
            let detached = g.detach();
            grads.insert_id(id, detached);
        }
    }
}
