//! Helpers over a candle `GradStore`: detach every gradient, scale every gradient. Every method's
//! step uses them (book chapter "Fused operations and speed", on why first-order steps detach at
//! once).

use crate::Result;
use candle_core::backprop::GradStore;

/// Detaches every gradient in `grads`. First-order methods call it as soon as a backward pass returns:
/// with second order on, candle keeps each gradient's graph (and every intermediate tensor it
/// references) alive until the store is dropped, which a first-order step never needs.
pub(crate) fn detach_all(grads: &mut GradStore) {
    let ids: Vec<_> = grads.get_ids().copied().collect();
    for id in ids {
        if let Some(g) = grads.get_id(id) {
            let detached = g.detach();
            grads.insert_id(id, detached);
        }
    }
}

/// Multiplies every gradient in `grads` by `factor`.
pub(crate) fn scale_all(grads: &mut GradStore, factor: f64) -> Result<()> {
    let ids: Vec<_> = grads.get_ids().copied().collect();
    for id in ids {
        if let Some(g) = grads.get_id(id) {
            let scaled = (g * factor)?;
            grads.insert_id(id, scaled);
        }
    }
    Ok(())
}
