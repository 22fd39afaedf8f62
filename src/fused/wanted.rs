//! Backward passes that say which gradients they need, so that the fused linear ops skip the rest.
//!
//! candle's backward computes a gradient for every argument of every op on the way from the loss to
//! a variable. Gradient penalty and Hutchinson take two or three backward passes per step, and all
//! but the last need only the gradient at the target's point: the weights' gradients of the inner
//! passes (one matrix product per linear layer and pass) are thrown away. [`backward_for`] runs a
//! backward pass in which the crate's fused ops ([`super::linear`]) leave out the gradients of
//! variables not named; [`backward_except`] one in which they leave out the variables named. candle's
//! own ops still compute everything, so the result is the same either way; only the time differs.
//! Only variables (leaves) can be left out: candle requires a gradient for every other node between
//! the loss and a variable, and stops with "grad not populated" where one is missing.
//!
//! The choice lives in a thread-local for the length of one backward pass (restored on return, error
//! or panic): candle calls an op's backward without context. Book: "Fused operations and speed".

use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use std::cell::RefCell;

/// Which arguments a fused op's backward must give a gradient to.
#[derive(Clone, Debug)]
enum Wanted {
    /// Every argument that takes part in differentiation.
    All,
    /// Non-variables, and the variables listed.
    OnlyVariables(Vec<TensorId>),
    /// Non-variables, and the variables not listed.
    AllExceptVariables(Vec<TensorId>),
}

thread_local! {
    static WANTED: RefCell<Wanted> = const { RefCell::new(Wanted::All) };
}

/// Restores the previous choice when dropped.
struct Restore(Option<Wanted>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(previous) = self.0.take() {
            WANTED.with(|w| *w.borrow_mut() = previous);
        }
    }
}

fn backward_with(loss: &Tensor, wanted: Wanted) -> Result<GradStore> {
    let previous = WANTED.with(|w| std::mem::replace(&mut *w.borrow_mut(), wanted));
    let _restore = Restore(Some(previous));
    Ok(loss.backward()?)
}

/// `loss.backward()` in which the fused ops compute no gradient for a variable outside `variables`.
///
/// The returned store holds correct gradients for `variables` and may lack those of other variables
/// (it still holds those that candle's own ops computed). Use it for an inner pass that needs only the
/// gradient at the target's point.
pub fn backward_for(loss: &Tensor, variables: &[&Tensor]) -> Result<GradStore> {
    let ids = variables.iter().map(|t| t.id()).collect();
    backward_with(loss, Wanted::OnlyVariables(ids))
}

/// `loss.backward()` in which the fused ops compute no gradient for the variables in `unwanted`
/// (a probe whose gradient nobody reads in this pass). Tensors in `unwanted` that are not variables
/// get their gradients as usual.
pub fn backward_except(loss: &Tensor, unwanted: &[&Tensor]) -> Result<GradStore> {
    let ids = unwanted.iter().map(|t| t.id()).collect();
    backward_with(loss, Wanted::AllExceptVariables(ids))
}

/// Whether a fused op's backward must compute the gradient of its argument `arg`.
pub(crate) fn needs_gradient(arg: &Tensor) -> bool {
    if !arg.track_op() {
        return false;
    }
    WANTED.with(|w| match &*w.borrow() {
        Wanted::All => true,
        Wanted::OnlyVariables(ids) => !arg.is_variable() || ids.contains(&arg.id()),
        Wanted::AllExceptVariables(ids) => !arg.is_variable() || !ids.contains(&arg.id()),
    })
}
