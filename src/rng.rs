//! Reproducible randomness: the crate's own seeded generator.
//!
//! candle's CPU random tensors cannot be seeded (`Device::Cpu.set_seed` returns an error), so every
//! noise draw, Hutchinson probe and initial weight in advtrain comes from this [`Rng`]: a ChaCha8 stream
//! drawn on the host in f64 and copied to the tensor's device and dtype. Same seed, same numbers, on every
//! platform and device. Book: "Noise" (sampling), and "Introduction", section "How a result is checked" (fixed seeds).

use crate::Result;
use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A seeded random number generator that builds tensors.
#[derive(Clone, Debug)]
pub struct Rng {
    inner: ChaCha8Rng,
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent generator derived from this one (advances this one by one draw).
    pub fn fork(&mut self) -> Self {
        Self::new(self.inner.next_u64())
    }

    /// One standard normal number.
    pub fn standard_normal(&mut self) -> f64 {
        self.inner.sample(StandardNormal)
    }

    /// One number uniform in `[lo, hi)`.
    pub fn uniform_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.inner.random::<f64>()
    }

    /// The numbers `0..n` in a random order (Fisher-Yates), e.g. to shuffle a data set.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.inner);
        order
    }

    /// `n` values drawn by `draw`, as a tensor of `shape`, `dtype` on `device`.
    fn tensor_from(
        &mut self,
        shape: &Shape,
        dtype: DType,
        device: &Device,
        mut draw: impl FnMut(&mut Self) -> f64,
    ) -> Result<Tensor> {
        let values: Vec<f64> = (0..shape.elem_count()).map(|_| draw(self)).collect();
        Ok(Tensor::from_vec(values, shape.clone(), device)?.to_dtype(dtype)?)
    }

    /// Standard normal entries N(0, 1).
    pub fn normal(
        &mut self,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.tensor_from(&shape.into(), dtype, device, |r| r.standard_normal())
    }

    /// Uniform entries in `[lo, hi)`.
    pub fn uniform(
        &mut self,
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        crate::error::check_positive("hi - lo", hi - lo)?;
        self.tensor_from(&shape.into(), dtype, device, |r| r.uniform_f64(lo, hi))
    }

    /// Rademacher entries: -1 or +1 with equal probability.
    pub fn rademacher(
        &mut self,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.tensor_from(&shape.into(), dtype, device, |r| {
            if r.inner.random::<bool>() { 1.0 } else { -1.0 }
        })
    }

    /// Bernoulli entries: 1 with probability `p`, else 0.
    pub fn bernoulli(
        &mut self,
        p: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(crate::Error::InvalidArgument {
                name: "p",
                reason: format!("a probability must lie in [0, 1], got {p}"),
                fix: "pass 0 <= p <= 1".into(),
            });
        }
        self.tensor_from(&shape.into(), dtype, device, |r| {
            if r.inner.random::<f64>() < p {
                1.0
            } else {
                0.0
            }
        })
    }
}
