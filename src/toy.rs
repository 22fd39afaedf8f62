//! Small seeded models and batches for checks, tests, notebooks and benchmarks.
//!
//! * [`Mlp`]: a multilayer perceptron classifier on input features (the "input" target).
//! * [`EmbeddingClassifier`]: token embeddings -> one self-attention block with the differentiable
//!   [`crate::ops::layer_norm`] and softmax -> feed-forward -> masked mean pool -> classifier; it can be
//!   run from token ids, from a perturbed embedding matrix, or from a perturbed embedding output.
//!
//! All weights come from a [`SeededVarMap`], so the same seed gives the same model everywhere.

use crate::init::SeededVarMap;
use crate::jet::Jet;
use crate::ops::{LayerNorm, softmax_last_dim};
use crate::{Error, Result, Rng};
use candle_core::{D, DType, Device, Module, Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder};

/// Smooth or piecewise-linear activations for the toy models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// tanh (smooth: every expansion of the book holds).
    Tanh,
    /// GELU, erf form.
    GeluErf,
    /// ReLU (piecewise linear: second derivatives vanish almost everywhere).
    Relu,
}

impl Activation {
    fn apply_jet(&self, x: &Jet) -> candle_core::Result<Jet> {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
    }

    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
    }
}

/// A multilayer perceptron classifier.
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Activation,
    params: SeededVarMap,
}

impl Mlp {
    /// Layer sizes `dims = [input, hidden..., classes]`, weights drawn from `seed`.
    pub fn new(
        dims: &[usize],
        activation: Activation,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if dims.len() < 2 || dims.contains(&0) {
            return Err(Error::InvalidArgument {
                name: "dims",
                reason: format!("need [input, ..., classes] with every size >= 1, got {dims:?}"),
                fix: "pass at least two positive layer sizes".into(),
            });
        }
        let params = SeededVarMap::new(seed);
        let vb = params.var_builder(dtype, device);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            activation,
            params,
        })
    }

    /// The logits `(b, classes)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = self.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    /// Mean cross-entropy against `labels` `(b,)`.
    pub fn loss(&self, x: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(&self.forward(x)?, labels)
    }

    /// [`Mlp::loss`] as a function of a jet of `x` (Taylor mode, [`crate::jet`]).
    pub fn loss_jet(&self, x: &Jet, labels: &Tensor) -> candle_core::Result<Jet> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = h.linear(layer.weight(), layer.bias())?;
            if i + 1 < self.layers.len() {
                h = self.activation.apply_jet(&h)?;
            }
        }
        h.cross_entropy(labels)
    }

    /// Cross-entropy of each example, `(b,)` (for quadrature over many perturbed copies).
    pub fn losses(&self, x: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        let log_p = candle_nn::ops::log_softmax(&self.forward(x)?, D::Minus1)?;
        log_p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    }

    /// Every weight, sorted by name.
    pub fn vars(&self) -> Vec<Var> {
        self.params.all_vars()
    }

    /// The weights of the layers, first to last (for the Lipschitz bound).
    pub fn weights(&self) -> Vec<&Tensor> {
        self.layers.iter().map(|l| l.weight()).collect()
    }
}

/// A one-block transformer-style text classifier.
pub struct EmbeddingClassifier {
    embedding: Var,
    query: Linear,
    key: Linear,
    value: Linear,
    norm: LayerNorm,
    feed_forward: Linear,
    classifier: Linear,
    hidden: usize,
    params: SeededVarMap,
}

/// A batch of token ids with padding.
pub struct TokenBatch {
    /// `(b, n)` token ids (u32); padded positions hold token 0.
    pub ids: Tensor,
    /// `(b, n)` 1 for real tokens, 0 for padding (same dtype as the model).
    pub mask: Tensor,
    /// `(b,)` class labels (u32).
    pub labels: Tensor,
}

impl EmbeddingClassifier {
    /// Vocabulary `vocab`, width `hidden`, `classes` outputs, weights drawn from `seed`.
    pub fn new(
        vocab: usize,
        hidden: usize,
        classes: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let params = SeededVarMap::new(seed);
        let vb: VarBuilder = params.var_builder(dtype, device);
        let embedding = vb.get_with_hints(
            (vocab, hidden),
            "embedding",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let embedding = params
            .varmap()
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .get("embedding")
            .cloned()
            .ok_or_else(|| Error::InvalidArgument {
                name: "embedding",
                reason: format!("not registered (shape {:?})", embedding.dims()),
                fix: "internal error".into(),
            })?;
        Ok(Self {
            embedding,
            query: candle_nn::linear(hidden, hidden, vb.pp("query"))?,
            key: candle_nn::linear(hidden, hidden, vb.pp("key"))?,
            value: candle_nn::linear(hidden, hidden, vb.pp("value"))?,
            norm: LayerNorm::load(hidden, 1e-5, vb.pp("norm"))?,
            feed_forward: candle_nn::linear(hidden, hidden, vb.pp("feed_forward"))?,
            classifier: candle_nn::linear(hidden, classes, vb.pp("classifier"))?,
            hidden,
            params,
        })
    }

    /// The embedding matrix (a variable).
    pub fn embedding_matrix(&self) -> &Var {
        &self.embedding
    }

    /// Looks `ids` up in `matrix` (the model's own, or a perturbed copy): `(b, n, hidden)`.
    pub fn embed_with(&self, matrix: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n) = ids.dims2()?;
        matrix
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, self.hidden))
    }

    /// Looks `ids` up in the model's embedding matrix.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.embed_with(self.embedding.as_tensor(), ids)
    }

    /// The first layer (for YOPO): self-attention with a residual connection, `(b, n, hidden)`.
    pub fn first_block(&self, e: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let scale = 1.0 / (self.hidden as f64).sqrt();
        let scores = (self.query.forward(e)?.matmul(&self.key.forward(e)?.t()?)? * scale)?;
        // Padded keys get a large negative score: their attention weight underflows to zero.
        let key_bias = ((mask.unsqueeze(1)? - 1.0)? * 1e4)?;
        let attention = softmax_last_dim(&scores.broadcast_add(&key_bias)?)?;
        e + attention.matmul(&self.value.forward(e)?)?
    }

    /// The rest of the model: layer norm, feed-forward, masked mean pool, classifier.
    pub fn head_logits(&self, h: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm.forward(h)?;
        let h = (&h + self.feed_forward.forward(&h)?.tanh()?)?;
        let m = mask.unsqueeze(2)?;
        let pooled = h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
        self.classifier.forward(&pooled)
    }

    /// Logits `(b, classes)` from embedding outputs `(b, n, hidden)` and the padding mask `(b, n)`.
    pub fn logits_from_embeddings(&self, e: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        self.head_logits(&self.first_block(e, mask)?, mask)
    }

    /// Mean cross-entropy from embedding outputs.
    pub fn loss_from_embeddings(
        &self,
        e: &Tensor,
        mask: &Tensor,
        labels: &Tensor,
    ) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(&self.logits_from_embeddings(e, mask)?, labels)
    }

    /// Every weight (the embedding matrix included), sorted by name.
    pub fn vars(&self) -> Vec<Var> {
        self.params.all_vars()
    }

    /// A random batch: lengths between 1 and `tokens`, ids in `1..vocab`, labels in `0..classes`.
    pub fn batch(
        &self,
        batch: usize,
        tokens: usize,
        classes: usize,
        rng: &mut Rng,
    ) -> Result<TokenBatch> {
        let vocab = self.embedding.dim(0)?;
        for (name, value) in [("batch", batch), ("tokens", tokens), ("classes", classes)] {
            crate::error::check_count(name, value)?;
        }
        if vocab < 2 {
            return Err(Error::InvalidArgument {
                name: "vocab",
                reason: format!("{vocab} rows leave no token besides the padding id 0"),
                fix: "build the classifier with a vocabulary of 2 or more".into(),
            });
        }
        let device = self.embedding.device();
        let mut ids = vec![0u32; batch * tokens];
        let mut mask = vec![0f64; batch * tokens];
        let mut labels = vec![0u32; batch];
        for row in 0..batch {
            let length = 1 + (rng.uniform_f64(0.0, tokens as f64) as usize).min(tokens - 1);
            for t in 0..length {
                ids[row * tokens + t] = 1 + (rng.uniform_f64(0.0, (vocab - 1) as f64) as u32);
                mask[row * tokens + t] = 1.0;
            }
            labels[row] = (rng.uniform_f64(0.0, classes as f64) as u32).min(classes as u32 - 1);
        }
        Ok(TokenBatch {
            ids: Tensor::from_vec(ids, (batch, tokens), device)?,
            mask: Tensor::from_vec(mask, (batch, tokens), device)?
                .to_dtype(self.embedding.dtype())?,
            labels: Tensor::from_vec(labels, batch, device)?,
        })
    }
}

/// A random classification batch: features `N(0, 1)` of shape `(batch, features)` and labels.
pub fn classification_batch(
    batch: usize,
    features: usize,
    classes: usize,
    dtype: DType,
    device: &Device,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor)> {
    crate::error::check_count("classes", classes)?;
    let x = rng.normal((batch, features), dtype, device)?;
    let labels: Vec<u32> = (0..batch)
        .map(|_| (rng.uniform_f64(0.0, classes as f64) as u32).min(classes as u32 - 1))
        .collect();
    Ok((x, Tensor::from_vec(labels, batch, device)?))
}

/// The three perturbation targets on small f64 models, as used by the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// [`Mlp`] 6-16-16-4 (tanh), batch 8, perturbing the input.
    MlpInput,
    /// [`EmbeddingClassifier`] (vocab 40, width 8, 3 classes), batch 4 of up to 6 tokens, perturbing
    /// the embedding output under the padding mask.
    EmbeddingOutput,
    /// The same model, perturbing the embedding matrix.
    EmbeddingMatrix,
}

impl Setup {
    /// Every setup, in table order.
    pub const ALL: [Setup; 3] = [
        Setup::MlpInput,
        Setup::EmbeddingOutput,
        Setup::EmbeddingMatrix,
    ];

    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Setup::MlpInput => "MLP input",
            Setup::EmbeddingOutput => "embedding output",
            Setup::EmbeddingMatrix => "embedding matrix",
        }
    }
}

/// A boxed loss closure: the (perturbed) point to a scalar loss.
pub type BoxedLoss = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

/// A loss closure over a target, with the model's weights.
pub struct Problem {
    /// Every weight of the model, in a fixed order.
    pub vars: Vec<Var>,
    /// What is perturbed.
    pub target: Target,
    /// The loss as a function of the (perturbed) point.
    pub loss: BoxedLoss,
}

use crate::method::Batch;
use crate::target::Target;

impl Problem {
    /// The problem as a method's [`Batch`]: the target and the loss.
    pub fn batch(&self) -> Batch<'_> {
        Batch::new(&self.target, &*self.loss)
    }
}

/// A seeded [`Problem`] for `setup` in f64 on the CPU.
pub fn problem(setup: Setup, seed: u64) -> Result<Problem> {
    problem_on(setup, seed, DType::F64, &Device::Cpu)
}

/// A seeded [`Problem`] for `setup` in `dtype` on `device`: the same weights and data as
/// [`problem`] (drawn by the crate's RNG, then converted), wherever it runs.
pub fn problem_on(setup: Setup, seed: u64, dtype: DType, device: &Device) -> Result<Problem> {
    let device = device.clone();
    let mut rng = Rng::new(seed);
    match setup {
        Setup::MlpInput => {
            let model = Mlp::new(&[6, 16, 16, 4], Activation::Tanh, seed, dtype, &device)?;
            let (x, labels) = classification_batch(8, 6, 4, dtype, &device, &mut rng)?;
            Ok(Problem {
                vars: model.vars(),
                target: Target::input(&x)?,
                loss: Box::new(move |x: &Tensor| model.loss(x, &labels)),
            })
        }
        Setup::EmbeddingOutput | Setup::EmbeddingMatrix => {
            let model = EmbeddingClassifier::new(40, 8, 3, seed, dtype, &device)?;
            let batch = model.batch(4, 6, 3, &mut rng)?;
            let vars = model.vars();
            if setup == Setup::EmbeddingOutput {
                let target =
                    Target::embedding_output(&model.embed(&batch.ids)?, Some(&batch.mask))?;
                Ok(Problem {
                    vars,
                    target,
                    loss: Box::new(move |e: &Tensor| {
                        model.loss_from_embeddings(e, &batch.mask, &batch.labels)
                    }),
                })
            } else {
                let target = Target::embedding_matrix(model.embedding_matrix())?;
                Ok(Problem {
                    vars,
                    target,
                    loss: Box::new(move |w: &Tensor| {
                        let e = model.embed_with(w, &batch.ids)?;
                        model.loss_from_embeddings(&e, &batch.mask, &batch.labels)
                    }),
                })
            }
        }
    }
}
