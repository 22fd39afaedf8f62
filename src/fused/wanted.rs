//! Backward passes that say which gradients they need, so that the fused ops skip the rest, and
//! first-order passes whose gradients keep no graph.
//!
//! candle's backward computes a gradient for every argument of every op on the way from the loss to
//! a variable. Gradient penalty and Hutchinson take two or three backward passes per step, and all
//! but the last need only the gradient at the target's point: the weights' gradients of the inner
//! passes (one matrix product per linear or convolution layer and pass, and the layer norms' column
//! sums) are thrown away. [`backward_for`] runs a backward pass in which the crate's fused ops
//! ([`super::linear`], [`super::conv2d`], [`super::attention`], [`super::embedding`], the layer
//! norm's scale and shift) leave out the gradients
//! of variables not named; [`backward_except`] one in which they leave out the variables named.
//! candle's own ops still compute everything, so the result is the same either way; only the time
//! differs. Only variables (leaves) can be left out: candle requires a gradient for every other node
//! between the loss and a variable, and stops with "grad not populated" where one is missing.
//! [`backward_first_order`] runs a pass in which every fused op returns its gradients detached, for
//! gradients nobody differentiates again.
//!
//! The choices live in thread-locals for the length of one backward pass (restored on return, error
//! or panic): candle calls an op's backward without context. Book: "Fused operations and speed".

use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use std::cell::{Cell, RefCell};

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
    static FIRST_ORDER: Cell<bool> = const { Cell::new(false) };
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

/// `loss.backward()` for gradients that nobody will differentiate again: the fused ops return their
/// gradients detached from the graph.
///
/// With second order on (`CANDLE_GRAD_DO_NOT_DETACH`), every gradient candle computes records the op
/// that made it, and so keeps that op's inputs alive, the gradients before it included, until the
/// pass's whole store is dropped: an FGM step of the MiniLM-sized encoder peaked at 1.30 GB against
/// 0.68 GB with second order off. Detached at each fused op, the chains stay short and each pass's
/// intermediate gradients are freed as the pass goes. The gradients are the same; only a further
/// differentiation of them would differ (it would see constants), so methods use this for their
/// first-order passes and plain `backward` (or [`backward_for`]) where a gradient is differentiated.
pub fn backward_first_order(loss: &Tensor) -> Result<GradStore> {
    let _first_order = first_order_pass();
    Ok(loss.backward()?)
}

/// While alive, the fused ops' backward returns detached gradients (see [`backward_first_order`]);
/// the previous choice comes back on drop, also on error or panic.
#[must_use = "the first-order pass ends when this is dropped"]
pub(crate) struct FirstOrderPass(bool);

impl Drop for FirstOrderPass {
    fn drop(&mut self) {
        FIRST_ORDER.with(|f| f.set(self.0));
    }
}

/// Starts a first-order pass on this thread, for a backward pass whose gradients nobody
/// differentiates (combined with [`backward_except`] in a method's last pass).
pub(crate) fn first_order_pass() -> FirstOrderPass {
    FirstOrderPass(FIRST_ORDER.with(|f| f.replace(true)))
}

/// A gradient a fused op's backward returns: detached inside [`backward_first_order`].
pub(crate) fn returned(gradient: Option<Tensor>) -> Option<Tensor> {
    match FIRST_ORDER.with(|f| f.get()) {
        true => gradient.map(|g| g.detach()),
        false => gradient,
    }
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
