//! Layers whose weight may be spectrally normalised: the experiments' "spectral norm" runs wrap every
//! dense and convolution weight of a model in [`SpectralNorm`] (W / sigma(W), power iteration in
//! training mode only), the others use W as it is. Book: "L-constraint", and "Experiments".

use advtrain::{Result, Rng, SpectralNorm};
use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a model is in training mode (power iterations advance) or evaluation mode.
#[derive(Debug, Default)]
pub struct Mode(AtomicBool);

impl Mode {
    /// Sets training (`true`) or evaluation (`false`) mode.
    pub fn set_train(&self, train: bool) {
        self.0.store(train, Ordering::Relaxed);
    }
    /// True in training mode.
    pub fn is_train(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A weight, optionally divided by its spectral norm.
pub struct Weight {
    weight: Tensor,
    spectral: Option<Mutex<SpectralNorm>>,
}

impl Weight {
    /// `weight` as is, or spectrally normalised when `rng` is given (it draws the power iteration's u).
    pub fn new(weight: Tensor, rng: Option<&mut Rng>) -> Result<Self> {
        let spectral = match rng {
            Some(rng) => Some(Mutex::new(SpectralNorm::new(&weight, rng)?)),
            None => None,
        };
        Ok(Self { weight, spectral })
    }

    /// The weight to use now: W, or W / sigma(W) (u, v updated only when `train`).
    pub fn get(&self, train: bool) -> Result<Tensor> {
        match &self.spectral {
            None => Ok(self.weight.clone()),
            Some(norm) => norm
                .lock()
                .expect("spectral norm lock poisoned")
                .normalise(&self.weight, train),
        }
    }

    /// The raw parameter.
    pub fn raw(&self) -> &Tensor {
        &self.weight
    }
}

/// A dense layer `x W^T + b` with an optionally normalised weight.
pub struct Dense {
    weight: Weight,
    bias: Tensor,
}

impl Dense {
    /// A `(out, inp)` layer under `vb` (names `weight`, `bias`, as candle-nn and BERT use them).
    pub fn new(inp: usize, out: usize, vb: VarBuilder, spectral: Option<&mut Rng>) -> Result<Self> {
        let linear = candle_nn::linear(inp, out, vb)?;
        let bias = linear
            .bias()
            .cloned()
            .expect("candle_nn::linear has a bias");
        Ok(Self {
            weight: Weight::new(linear.weight().clone(), spectral)?,
            bias,
        })
    }

    /// Applies the layer to `x` of shape `(..., inp)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let linear = candle_nn::Linear::new(self.weight.get(train)?, Some(self.bias.clone()));
        Ok(linear.forward(x)?)
    }

    /// The raw weight.
    pub fn weight(&self) -> &Tensor {
        self.weight.raw()
    }
}

/// A 2-D convolution with an optionally normalised kernel (the kernel reshaped to `(out, in*k*k)`).
pub struct Conv {
    weight: Weight,
    bias: Tensor,
    config: Conv2dConfig,
}

impl Conv {
    /// `inp -> out` channels, `kernel` x `kernel`, with `config` (padding, stride).
    pub fn new(
        inp: usize,
        out: usize,
        kernel: usize,
        config: Conv2dConfig,
        vb: VarBuilder,
        spectral: Option<&mut Rng>,
    ) -> Result<Self> {
        let conv = candle_nn::conv2d(inp, out, kernel, config, vb)?;
        let bias = conv.bias().cloned().expect("candle_nn::conv2d has a bias");
        Ok(Self {
            weight: Weight::new(conv.weight().clone(), spectral)?,
            bias,
            config,
        })
    }

    /// Applies the convolution to `x` of shape `(b, inp, h, w)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let conv = candle_nn::Conv2d::new(
            self.weight.get(train)?,
            Some(self.bias.clone()),
            self.config,
        );
        Ok(conv.forward(x)?)
    }

    /// The raw kernel.
    pub fn weight(&self) -> &Tensor {
        self.weight.raw()
    }
}
