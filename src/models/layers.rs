//! Layers whose weight may be spectrally normalised (`W / sigma(W)`, power iteration in training mode
//! only, [`crate::SpectralNorm`]), and the training / evaluation switch. [`Dense`] runs on the fused
//! [`crate::fused::linear`]. Book: "Models", and "L-constraint" for the normalisation.

use crate::{Jet, Result, Rng, SpectralNorm};
use candle_core::Tensor;
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
struct Weight {
    weight: Tensor,
    spectral: Option<Mutex<SpectralNorm>>,
}

impl Weight {
    fn new(weight: Tensor) -> Self {
        Self {
            weight,
            spectral: None,
        }
    }

    /// From now on, W / sigma(W); `rng` draws the power iteration's starting vector.
    fn normalise(&mut self, rng: &mut Rng) -> Result<()> {
        self.spectral = Some(Mutex::new(SpectralNorm::new(&self.weight, rng)?));
        Ok(())
    }

    /// The weight to use now: W, or W / sigma(W) (u, v updated only when `train`).
    fn get(&self, train: bool) -> Result<Tensor> {
        match &self.spectral {
            None => Ok(self.weight.clone()),
            Some(norm) => norm
                .lock()
                .expect("spectral norm lock poisoned")
                .normalise(&self.weight, train),
        }
    }
}

/// A dense layer `x W^T + b` on the fused linear op, with an optionally normalised weight.
pub struct Dense {
    weight: Weight,
    bias: Tensor,
}

impl Dense {
    /// A `(out, inp)` layer under `vb`, initialised as `candle_nn::linear` (names `weight` and
    /// `bias`, as candle-nn and BERT use them).
    pub fn new(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        let linear = candle_nn::linear(inp, out, vb)?;
        let bias = linear
            .bias()
            .cloned()
            .expect("candle_nn::linear has a bias");
        Ok(Self {
            weight: Weight::new(linear.weight().clone()),
            bias,
        })
    }

    /// Divides the weight by its spectral norm from now on; `rng` draws the power iteration's start.
    pub fn normalise(&mut self, rng: &mut Rng) -> Result<()> {
        self.weight.normalise(rng)
    }

    /// Applies the layer to `x` of shape `(..., inp)`; `train` advances the power iteration.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(crate::fused::linear(
            x,
            &self.weight.get(train)?,
            Some(&self.bias),
        )?)
    }

    /// [`Dense::forward`] on a jet (Taylor mode, [`crate::jet`]).
    pub fn forward_jet(&self, x: &Jet, train: bool) -> Result<Jet> {
        Ok(x.linear(&self.weight.get(train)?, Some(&self.bias))?)
    }

    /// The raw weight `(out, inp)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight.weight
    }
}

/// A 2-D convolution ([`crate::fused::conv2d`], differentiable to any order) with an optionally
/// normalised kernel (the kernel reshaped to `(out, in*k*k)`: a bound on the kernel, not on the
/// convolution operator, whose norm can be larger where windows overlap).
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
    ) -> Result<Self> {
        if config.dilation != 1 || config.groups != 1 {
            return Err(crate::Error::InvalidArgument {
                name: "config",
                reason: format!(
                    "dilation {} and groups {}: the fused convolution has dilation 1 and one group",
                    config.dilation, config.groups
                ),
                fix: "pass Conv2dConfig { padding, stride, ..Default::default() }".into(),
            });
        }
        let conv = candle_nn::conv2d(inp, out, kernel, config, vb)?;
        let bias = conv.bias().cloned().expect("candle_nn::conv2d has a bias");
        Ok(Self {
            weight: Weight::new(conv.weight().clone()),
            bias,
            config,
        })
    }

    /// Divides the kernel by its spectral norm from now on; `rng` draws the power iteration's start.
    pub fn normalise(&mut self, rng: &mut Rng) -> Result<()> {
        self.weight.normalise(rng)
    }

    /// Applies the convolution to `x` of shape `(b, inp, h, w)`, by [`crate::fused::conv2d`].
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (stride, padding) = (self.config.stride, self.config.padding);
        Ok(crate::fused::conv2d(
            x,
            &self.weight.get(train)?,
            Some(&self.bias),
            stride,
            padding,
        )?)
    }

    /// [`Conv::forward`] on a jet: the convolution is linear, the bias enters the value only.
    pub fn forward_jet(&self, x: &Jet, train: bool) -> Result<Jet> {
        let (stride, padding) = (self.config.stride, self.config.padding);
        let kernel = self.weight.get(train)?;
        let bias = self.bias.reshape((1, self.bias.elem_count(), 1, 1))?;
        Ok(
            x.map_linear(|t| crate::fused::conv2d(t, &kernel, None, stride, padding))?
                .broadcast_add_constant(&bias)?,
        )
    }

    /// The raw kernel.
    pub fn weight(&self) -> &Tensor {
        &self.weight.weight
    }
}
