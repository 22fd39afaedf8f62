//! The second-order guard.
//!
//! candle keeps the graph of a gradient (so that it can be differentiated again) only when the
//! environment variable `CANDLE_GRAD_DO_NOT_DETACH` is set, read once per thread at its first backward
//! pass. Without it, gradient penalty, Hessian-vector products and a trained Hutchinson estimate come out
//! silently wrong. Every function of advtrain that differentiates a gradient calls [`require`] first and
//! returns [`Error::SecondOrderDisabled`] instead of a wrong number.
//! Book: "Introduction", section "Two facts about candle", and "FGM and gradient penalty", section
//! "Computing the penalty's gradient".

use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use std::cell::Cell;

/// The environment variable candle reads.
pub const ENV_VAR: &str = "CANDLE_GRAD_DO_NOT_DETACH";

thread_local! {
    static ENABLED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether gradients computed on this thread keep their graph (second order works).
///
/// Measured, not guessed: the first call on a thread differentiates `sin(2x)` and looks whether the
/// gradient still records its op. candle caches its setting per thread, so the answer is cached too.
pub fn is_enabled() -> bool {
    ENABLED.with(|cell| {
        if let Some(known) = cell.get() {
            return known;
        }
        let known = probe().unwrap_or(false);
        cell.set(Some(known));
        known
    })
}

fn probe() -> candle_core::Result<bool> {
    let x = Var::from_tensor(&Tensor::new(0.3f64, &Device::Cpu)?)?;
    let y = (x.as_tensor() * 2.0)?.sin()?;
    let grads = y.backward()?;
    Ok(grads.get(&x).map(|g| g.track_op()).unwrap_or(false))
}

/// `Ok(())` when second order is on for this thread, otherwise an error naming `what` and the fix.
pub fn require(what: &'static str) -> Result<()> {
    if is_enabled() {
        Ok(())
    } else {
        Err(Error::SecondOrderDisabled { what })
    }
}

/// Sets `CANDLE_GRAD_DO_NOT_DETACH=1` for this process, so that every thread whose first backward pass
/// comes later gets second-order gradients. Call it first thing in `main` (or a notebook's first cell).
/// A thread that already ran a backward pass keeps its setting; [`is_enabled`] tells.
///
/// # Safety
/// It calls `std::env::set_var`: no other thread may read or write the environment at the same time.
/// At the start of `main`, before any thread is spawned, that holds.
pub unsafe fn enable_for_new_threads() {
    unsafe { std::env::set_var(ENV_VAR, "1") };
}
