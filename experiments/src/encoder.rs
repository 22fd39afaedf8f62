//! A BERT-style transformer text classifier, trained from scratch (a small configuration) or
//! initialised from all-MiniLM-L6-v2's safetensors (tensor names as in BERT, without a `bert.` prefix).
//!
//! Every layer norm is advtrain's differentiable [`LayerNorm`] and attention
//! uses the differentiable softmax: candle-nn's fused versions pass no gradient, so an embedding-level
//! perturbation would receive none (candle-transformers' BERT has that problem). The perturbation
//! target is the word-embedding lookup, before position embeddings and the embedding layer norm, as in
//! the seeds' FGM. The sentence is the mask-weighted mean of the last layer (as sentence-transformers
//! pools MiniLM), then a dense classifier. Book: "Min-max" (why embeddings) and "Experiments".

use super::layers::{Dense, Mode};
use advtrain::init::SeededVarMap;
use advtrain::ops::{LayerNorm, softmax_last_dim};
use advtrain::{Error, Result, Rng};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use std::path::Path;

/// The encoder's sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub layer_norm_eps: f64,
    pub classes: usize,
}

impl EncoderConfig {
    /// The from-scratch model: 2 layers, width 128, 4 heads.
    pub fn small(vocab: usize, max_positions: usize, classes: usize) -> Self {
        Self {
            vocab,
            hidden: 128,
            layers: 2,
            heads: 4,
            intermediate: 256,
            max_positions,
            type_vocab: 2,
            layer_norm_eps: 1e-12,
            classes,
        }
    }

    /// all-MiniLM-L6-v2: 6 layers, width 384, 12 heads, 30,522 WordPiece tokens.
    pub fn minilm(classes: usize) -> Self {
        Self {
            vocab: 30_522,
            hidden: 384,
            layers: 6,
            heads: 12,
            intermediate: 1_536,
            max_positions: 512,
            type_vocab: 2,
            layer_norm_eps: 1e-12,
            classes,
        }
    }
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    up: Dense,
    down: Dense,
    output_norm: LayerNorm,
}

/// The classifier: embeddings -> encoder layers -> masked mean -> dense.
pub struct TextClassifier {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    classifier: Dense,
    config: EncoderConfig,
    params: SeededVarMap,
    /// Training or evaluation mode.
    pub mode: Mode,
}

fn embedding(vb: &VarBuilder, rows: usize, hidden: usize, name: &str) -> Result<Tensor> {
    Ok(vb.pp(name).get_with_hints(
        (rows, hidden),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?)
}

impl TextClassifier {
    /// Weights drawn from `seed`; the feed-forward and classifier weights spectrally normalised when
    /// `spectral` is true.
    pub fn new(
        config: EncoderConfig,
        seed: u64,
        spectral: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if config.heads == 0 || !config.hidden.is_multiple_of(config.heads) {
            return Err(Error::InvalidArgument {
                name: "config.heads",
                reason: format!(
                    "{} heads do not divide width {}",
                    config.heads, config.hidden
                ),
                fix: "pick a number of heads that divides the width".into(),
            });
        }
        let params = SeededVarMap::new(seed);
        let vb = params.var_builder(dtype, device);
        let mut rng = spectral.then(|| Rng::new(seed ^ 0x5eed));
        let (d, eps) = (config.hidden, config.layer_norm_eps);
        let emb = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let attention = l.pp("attention");
            layers.push(Layer {
                query: Dense::new(d, d, attention.pp("self.query"), None)?,
                key: Dense::new(d, d, attention.pp("self.key"), None)?,
                value: Dense::new(d, d, attention.pp("self.value"), None)?,
                attention_out: Dense::new(d, d, attention.pp("output.dense"), None)?,
                attention_norm: LayerNorm::load(d, eps, attention.pp("output.LayerNorm"))?,
                up: Dense::new(
                    d,
                    config.intermediate,
                    l.pp("intermediate.dense"),
                    rng.as_mut(),
                )?,
                down: Dense::new(config.intermediate, d, l.pp("output.dense"), rng.as_mut())?,
                output_norm: LayerNorm::load(d, eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word: embedding(&emb, config.vocab, d, "word_embeddings")?,
            position: embedding(&emb, config.max_positions, d, "position_embeddings")?,
            token_type: embedding(&emb, config.type_vocab, d, "token_type_embeddings")?,
            embedding_norm: LayerNorm::load(d, eps, emb.pp("LayerNorm"))?,
            layers,
            classifier: Dense::new(d, config.classes, vb.pp("classifier"), rng.as_mut())?,
            config,
            params,
            mode: Mode::default(),
        })
    }

    /// Copies every encoder weight from a BERT safetensors file (all-MiniLM-L6-v2's `model.safetensors`);
    /// the classifier keeps its seeded initial values. A missing or misshapen tensor is an error.
    pub fn load_pretrained(&self, path: &Path) -> Result<usize> {
        let shown = path.display().to_string();
        let device = self.word.device().clone();
        let tensors = candle_core::safetensors::load(path, &device).map_err(|e| {
            Error::data(
                shown.clone(),
                None,
                format!("cannot read safetensors: {e}"),
                "run scripts/setup.sh, which downloads the model and checks its sha256",
            )
        })?;
        let data = self.params.varmap().data().lock().expect("VarMap lock");
        let mut copied = 0;
        for (name, var) in data.iter() {
            if name.starts_with("classifier.") {
                continue;
            }
            let Some(t) = tensors.get(name) else {
                return Err(Error::data(
                    shown,
                    None,
                    format!("no tensor named {name}"),
                    "use a BERT checkpoint whose sizes match EncoderConfig::minilm",
                ));
            };
            if t.dims() != var.dims() {
                return Err(Error::data(
                    shown,
                    None,
                    format!(
                        "{name} has shape {:?}, the model {:?}",
                        t.dims(),
                        var.dims()
                    ),
                    "use a BERT checkpoint whose sizes match the EncoderConfig",
                ));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
            copied += 1;
        }
        Ok(copied)
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Word embeddings of `ids` `(b, n)`: `(b, n, hidden)`, the perturbation target.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        if n > self.config.max_positions {
            return Err(Error::ShapeMismatch {
                name: "ids",
                expected: format!("at most {} tokens", self.config.max_positions),
                got: vec![b, n],
            });
        }
        Ok(self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, self.config.hidden))?)
    }

    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        key_bias: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, n, d) = h.dims3()?;
        let heads = self.config.heads;
        let split = |x: Tensor| -> Result<Tensor> {
            Ok(x.reshape((b, n, heads, d / heads))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(layer.query.forward(h, train)?)?;
        let k = split(layer.key.forward(h, train)?)?;
        let v = split(layer.value.forward(h, train)?)?;
        let scale = 1.0 / ((d / heads) as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(key_bias)?;
        let context = softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        layer.attention_out.forward(&context, train)
    }

    /// The mask-weighted mean of the last layer `(b, hidden)` from word embeddings `(b, n, hidden)` and
    /// the padding mask `(b, n)`.
    pub fn pooled_from_embeddings(&self, e: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let train = self.mode.is_train();
        let (_, n, _) = e.dims3()?;
        let position = self.position.narrow(0, 0, n)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let embedded = e.broadcast_add(&position)?.broadcast_add(&token_type)?;
        let mut h = self.embedding_norm.forward(&embedded)?;
        // Padded keys get a large negative score: their attention weight underflows to zero.
        let key_bias = ((mask.unsqueeze(1)?.unsqueeze(1)? - 1.0)? * 1e4)?;
        for layer in &self.layers {
            let a = self.attention(layer, &h, &key_bias, train)?;
            h = layer.attention_norm.forward(&(h + a)?)?;
            let f = layer
                .down
                .forward(&layer.up.forward(&h, train)?.gelu_erf()?, train)?;
            h = layer.output_norm.forward(&(h + f)?)?;
        }
        let m = mask.unsqueeze(2)?;
        Ok(h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?)
    }

    /// The class scores `(b, classes)` from word embeddings `e` (see [`Self::pooled_from_embeddings`]).
    pub fn logits_from_embeddings(&self, e: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let pooled = self.pooled_from_embeddings(e, mask)?;
        self.classifier.forward(&pooled, self.mode.is_train())
    }

    /// The sentence embedding of sentence-transformers: the mean-pooled last layer, L2-normalised
    /// (inference: no dropout). For all-MiniLM-L6-v2 this is the published embedding.
    pub fn sentence_embedding(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let pooled = self.pooled_from_embeddings(&self.embed(ids)?, mask)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(pooled.broadcast_div(&norm)?)
    }

    /// Every parameter, sorted by name.
    pub fn vars(&self) -> Vec<Var> {
        self.params.all_vars()
    }

    /// The parameter map (for checkpoints).
    pub fn params(&self) -> &SeededVarMap {
        &self.params
    }
}
