//! A small convolutional network for MNIST: two 5x5 stride-2 convolutions (28 -> 14 -> 7) with GELU,
//! then a dense classifier. Strided convolutions instead of pooling keep every op twice
//! differentiable in candle, so gradient penalty trains through it. Book: "Experiments".

use super::layers::{Conv, Dense, Mode};
use advtrain::init::SeededVarMap;
use advtrain::{Result, Rng};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Conv2dConfig;

/// The MNIST classifier; the input is `(b, 784)` pixels in [0, 1].
pub struct Cnn {
    conv1: Conv,
    conv2: Conv,
    classifier: Dense,
    params: SeededVarMap,
    /// Training or evaluation mode (spectral norm's power iteration runs only in training).
    pub mode: Mode,
}

impl Cnn {
    /// Weights drawn from `seed`; every layer spectrally normalised when `spectral` is true.
    pub fn new(seed: u64, spectral: bool, dtype: DType, device: &Device) -> Result<Self> {
        let params = SeededVarMap::new(seed);
        let vb = params.var_builder(dtype, device);
        // Draws the power iterations' starting vectors, when the layers are constrained.
        let mut rng = spectral.then(|| Rng::new(seed ^ 0x5eed));
        let config = Conv2dConfig {
            padding: 2,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv1: Conv::new(1, 16, 5, config, vb.pp("conv1"), rng.as_mut())?,
            conv2: Conv::new(16, 32, 5, config, vb.pp("conv2"), rng.as_mut())?,
            classifier: Dense::new(32 * 7 * 7, 10, vb.pp("classifier"), rng.as_mut())?,
            params,
            mode: Mode::default(),
        })
    }

    /// Logits `(b, 10)` from pixels `(b, 784)`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let train = self.mode.is_train();
        let b = x.dim(0)?;
        let h = x.reshape((b, 1, 28, 28))?;
        let h = self.conv1.forward(&h, train)?.gelu_erf()?;
        let h = self.conv2.forward(&h, train)?.gelu_erf()?;
        self.classifier.forward(&h.flatten_from(1)?, train)
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
