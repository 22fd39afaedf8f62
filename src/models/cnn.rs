//! A small convolutional network for 28 x 28 images (MNIST, Fashion-MNIST): two 5x5 stride-2
//! convolutions (28 -> 14 -> 7) with the fused GELU, then a dense classifier on the fused linear op.
//! Strided convolutions instead of pooling keep every op twice differentiable, so gradient penalty
//! and Hutchinson train through it. Book: "Models", and "Experiments" (MNIST).

use super::layers::{Conv, Dense, Mode};
use crate::init::SeededVarMap;
use crate::{Error, Jet, Result, Rng};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Conv2dConfig;

/// The image classifier; the input is `(b, 784)` pixels (in [0, 1] for MNIST).
pub struct Cnn {
    conv1: Conv,
    conv2: Conv,
    classifier: Dense,
    classes: usize,
    params: SeededVarMap,
    /// Training or evaluation mode (spectral norm's power iteration runs only in training).
    pub mode: Mode,
}

impl Cnn {
    /// Side of the square input image.
    pub const SIDE: usize = 28;

    /// Weights drawn from `seed`, `classes` outputs.
    pub fn new(seed: u64, classes: usize, dtype: DType, device: &Device) -> Result<Self> {
        crate::error::check_count("classes", classes)?;
        let params = SeededVarMap::new(seed);
        let vb = params.var_builder(dtype, device);
        let config = Conv2dConfig {
            padding: 2,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv1: Conv::new(1, 16, 5, config, vb.pp("conv1"))?,
            conv2: Conv::new(16, 32, 5, config, vb.pp("conv2"))?,
            classifier: Dense::new(32 * 7 * 7, classes, vb.pp("classifier"))?,
            classes,
            params,
            mode: Mode::default(),
        })
    }

    /// Every layer spectrally normalised from now on; `rng` draws the power iterations' starts.
    pub fn spectrally_normalised(mut self, rng: &mut Rng) -> Result<Self> {
        self.conv1.normalise(rng)?;
        self.conv2.normalise(rng)?;
        self.classifier.normalise(rng)?;
        Ok(self)
    }

    /// The batch size of pixels `(b, 784)`, or an error naming the shape expected.
    fn batch_of(x: &Tensor) -> Result<usize> {
        let side = Self::SIDE;
        let (b, pixels) = x.dims2().map_err(|_| Error::ShapeMismatch {
            name: "x",
            expected: format!("(batch, {})", side * side),
            got: x.dims().to_vec(),
        })?;
        if pixels != side * side {
            return Err(Error::ShapeMismatch {
                name: "x",
                expected: format!("(batch, {}): {side} x {side} images", side * side),
                got: vec![b, pixels],
            });
        }
        Ok(b)
    }

    /// Logits `(b, classes)` from pixels `(b, 784)`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (b, side) = (Self::batch_of(x)?, Self::SIDE);
        let train = self.mode.is_train();
        let h = x.reshape((b, 1, side, side))?;
        let h = crate::fused::gelu_erf(&self.conv1.forward(&h, train)?)?;
        let h = crate::fused::gelu_erf(&self.conv2.forward(&h, train)?)?;
        self.classifier.forward(&h.flatten_from(1)?, train)
    }

    /// [`Cnn::logits`] on a jet of the pixels (Taylor mode, [`crate::jet`]).
    pub fn logits_jet(&self, x: &Jet) -> Result<Jet> {
        let (b, side) = (Self::batch_of(x.primal())?, Self::SIDE);
        let train = self.mode.is_train();
        let h = x.map_linear(|t| t.reshape((b, 1, side, side)))?;
        let h = self.conv1.forward_jet(&h, train)?.gelu_erf()?;
        let h = self.conv2.forward_jet(&h, train)?.gelu_erf()?;
        self.classifier
            .forward_jet(&h.map_linear(|t| t.flatten_from(1))?, train)
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Every parameter, sorted by name.
    pub fn vars(&self) -> Vec<Var> {
        self.params.all_vars()
    }

    /// The parameter map (for checkpoints).
    pub fn params(&self) -> &SeededVarMap {
        &self.params
    }

    /// The raw weights, for a Lipschitz bound.
    pub fn weights(&self) -> [&Tensor; 3] {
        [
            self.conv1.weight(),
            self.conv2.weight(),
            self.classifier.weight(),
        ]
    }
}
