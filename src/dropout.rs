//! Dropout under attack: a dropout whose mask is held fixed across a batch's ascent steps.
//!
//! `candle_nn::ops::dropout` draws a fresh mask on every call. A multi-step method (PGD, FreeLB, SMART,
//! VAT) evaluates the model several times on one batch; with fresh masks each ascent step attacks a
//! different network and the perturbation chases dropout noise rather than the model. [`HeldDropout`]
//! draws a mask once per batch ([`HeldDropout::resample`]) and applies the same one until the next.
//! Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT", section on dropout.

use crate::{Error, Result, Rng};
use candle_core::{DType, Device, Shape, Tensor};
use std::sync::Mutex;

/// Inverted dropout with a mask held until [`HeldDropout::resample`].
pub struct HeldDropout {
    drop: f64,
    mask: Mutex<Option<Tensor>>,
}

impl HeldDropout {
    /// Drop probability `drop` in [0, 1).
    pub fn new(drop: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&drop) {
            return Err(Error::InvalidArgument {
                name: "drop",
                reason: format!("a drop probability lies in [0, 1), got {drop}"),
                fix: "pass 0 <= drop < 1".into(),
            });
        }
        Ok(Self {
            drop,
            mask: Mutex::new(None),
        })
    }

    /// Draws a new mask `Bernoulli(1 - drop) / (1 - drop)` for inputs of `shape`: call it once at the
    /// start of each batch, before the method's step.
    pub fn resample(
        &self,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<()> {
        let keep = 1.0 - self.drop;
        let mask = (rng.bernoulli(keep, shape, dtype, device)? / keep)?;
        *self.mask.lock().expect("dropout mask poisoned") = Some(mask);
        Ok(())
    }

    /// `x * mask` in training (the held mask), `x` in evaluation.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.drop == 0.0 {
            return Ok(x.clone());
        }
        let guard = self.mask.lock().expect("dropout mask poisoned");
        let mask = guard.as_ref().ok_or_else(|| Error::InvalidArgument {
            name: "mask",
            reason: "no dropout mask is held".into(),
            fix: "call HeldDropout::resample(shape, ..) at the start of each batch".into(),
        })?;
        if mask.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                name: "mask",
                expected: format!(
                    "{:?} (the input's shape): resample for this batch",
                    x.dims()
                ),
                got: mask.dims().to_vec(),
            });
        }
        if mask.dtype() != x.dtype() {
            return Err(Error::DTypeMismatch {
                name: "mask",
                expected: x.dtype(),
                got: mask.dtype(),
            });
        }
        Ok((x * mask)?)
    }
}
