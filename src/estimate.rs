//! A Monte-Carlo estimate with its standard error, and a scalar tensor's value: what the Hutchinson
//! estimator ([`crate::laplacian::hutchinson`]) and the verification checks report. Book chapter:
//! "Noise".

use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// A tensor's value as f64 (it must hold exactly one element).
pub fn scalar(t: &Tensor) -> Result<f64> {
    if t.elem_count() != 1 {
        return Err(Error::ShapeMismatch {
            name: "loss",
            expected: "a scalar (one element)".into(),
            got: t.dims().to_vec(),
        });
    }
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

/// A Monte-Carlo estimate with its standard error.
#[derive(Clone, Debug)]
pub struct Estimate {
    /// Mean of the samples.
    pub mean: f64,
    /// Standard error of the mean (sample standard deviation / sqrt(n)).
    pub std_error: f64,
    /// The samples.
    pub samples: Vec<f64>,
}

/// Checks that an estimate with a standard error gets at least 2 samples (`probes`).
pub fn check_probes(probes: usize) -> Result<()> {
    if probes < 2 {
        return Err(Error::InvalidArgument {
            name: "probes",
            reason: format!("a standard error needs at least 2 samples, got {probes}"),
            fix: "draw 2 or more probes".into(),
        });
    }
    Ok(())
}

impl Estimate {
    /// Mean and standard error of `samples` (at least two).
    pub fn from_samples(samples: Vec<f64>) -> Result<Self> {
        let n = samples.len();
        check_probes(n)?;
        let bad = samples.iter().filter(|s| !s.is_finite()).count();
        if bad > 0 {
            return Err(Error::NonFinite {
                what: format!("{bad} of {n} samples of the estimate"),
            });
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Ok(Self {
            mean,
            std_error: (variance / n as f64).sqrt(),
            samples,
        })
    }

    /// The sample variance of one draw.
    pub fn variance(&self) -> f64 {
        self.std_error.powi(2) * self.samples.len() as f64
    }
}
