//! A BERT-family text classifier (BERT, RoBERTa, MiniLM) on the fused ops, with the Hugging Face
//! layout: `config.json` ([`BertConfig`]) and `model.safetensors`.
//!
//! The encoder is BERT's post-norm transformer: word + position + token-type embeddings, a layer norm,
//! then per layer `h = LN(h + Attention(h))`, `h = LN(h + W2 act(W1 h))`. Every linear map is
//! [`crate::fused::linear`], every layer norm [`crate::fused::layer_norm`], the attention
//! [`crate::fused::attention`] (heads as strided views, the weights by the fused softmax) and the
//! activation [`crate::fused::gelu_erf`] or
//! [`crate::fused::gelu_tanh`]: each has a backward differentiable to any order, so an embedding
//! perturbation gets its true gradient and gradient penalty / Hutchinson differentiate through the
//! whole encoder. The head pools the last layer ([`Pooling::Cls`], the first token as the seeds'
//! BERT classifier uses it, or [`Pooling::Mean`], the padding-masked mean as sentence-transformers
//! pools MiniLM) and maps it to class scores with one dense layer. There is no dropout: the
//! `*_dropout_prob` keys of `config.json` are not read.
//!
//! The perturbation target of the seeds' FGM is the word-embedding lookup, before the position
//! embeddings and the embedding layer norm: [`BertClassifier::embed`] returns it and
//! [`BertClassifier::logits_from_embeddings`] is the rest of the model. Book: "Models"; why
//! embeddings: "Min-max".

use super::layers::{Dense, Mode};
use crate::init::SeededVarMap;
use crate::ops::LayerNorm;
use crate::{Error, Jet, Result, Rng};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// The feed-forward activation (`hidden_act` in `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact `x Phi(x)` (BERT's and MiniLM's).
    GeluErf,
    /// `gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

impl Activation {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::GeluErf => "gelu",
            Self::GeluTanh => "gelu_new",
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => crate::fused::gelu_erf(x),
            Self::GeluTanh => crate::fused::gelu_tanh(x),
        }
    }

    fn apply_jet(self, x: &Jet) -> candle_core::Result<Jet> {
        match self {
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu_tanh(),
        }
    }
}

/// The encoder's sizes, with the names and meaning of a Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// `bert`, `roberta` or `xlm-roberta`: RoBERTa's positions start after the padding index.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub pad_token_id: usize,
}

const MODEL_TYPES: [&str; 3] = ["bert", "roberta", "xlm-roberta"];

impl BertConfig {
    /// all-MiniLM-L6-v2: 6 layers, width 384, 12 heads, 30,522 WordPiece tokens.
    pub fn minilm() -> Self {
        Self {
            model_type: "bert".into(),
            vocab_size: 30_522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1_536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: Activation::GeluErf,
            pad_token_id: 0,
        }
    }

    /// BERT-base: 12 layers, width 768, 12 heads, with a vocabulary of `vocab_size` tokens (21,128
    /// for bert-base-chinese).
    pub fn bert_base(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3_072,
            ..Self::minilm()
        }
    }

    /// A small encoder to train from scratch: 2 layers, width 128, 4 heads, feed-forward 256.
    pub fn small(vocab_size: usize, max_positions: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 256,
            max_position_embeddings: max_positions,
            ..Self::minilm()
        }
    }

    /// Where position ids start: 0 for BERT, `pad_token_id + 1` for the RoBERTa family.
    pub fn position_offset(&self) -> usize {
        if self.model_type == "bert" {
            0
        } else {
            self.pad_token_id.saturating_add(1)
        }
    }

    /// The longest sequence the position embeddings cover.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Checks the sizes: every size positive, the heads dividing the width, `layer_norm_eps > 0`.
    pub fn validate(&self) -> Result<()> {
        if !MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(Error::InvalidArgument {
                name: "model_type",
                reason: format!("{:?} is not a BERT-family encoder", self.model_type),
                fix: format!("use a checkpoint of type {}", MODEL_TYPES.join(", ")),
            });
        }
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            crate::error::check_count(name, value)?;
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::InvalidArgument {
                name: "num_attention_heads",
                reason: format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
                fix: "pick a number of heads that divides the width".into(),
            });
        }
        if self.max_tokens() == 0 {
            return Err(Error::InvalidArgument {
                name: "max_position_embeddings",
                reason: format!(
                    "{} positions leave no token after the offset {}",
                    self.max_position_embeddings,
                    self.position_offset()
                ),
                fix: "use a config with more positions".into(),
            });
        }
        crate::error::check_positive("layer_norm_eps", self.layer_norm_eps)
    }

    /// Reads a Hugging Face `config.json`. Keys the encoder needs but the file lacks, values of the
    /// wrong type, and what the encoder does not implement (another activation, relative position
    /// embeddings, another model type) are errors naming the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::data(
                &shown,
                None,
                format!("cannot read the model's config: {e}"),
                "pass a Hugging Face model directory (config.json, model.safetensors, tokenizer.json)",
            )
        })?;
        Self::from_json(&text, &shown)
    }

    /// Parses the text of a `config.json`; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let bad = |key: &str, reason: String| {
            Error::data(
                source,
                None,
                format!("key {key:?}: {reason}"),
                "use a BERT, RoBERTa or MiniLM checkpoint's config.json",
            )
        };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::data(
                source,
                Some(e.line()),
                format!("not JSON: {e}"),
                "pass the model's config.json",
            )
        })?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("(top level)", "not a JSON object".into()))?;
        let count = |key: &str, default: Option<usize>| -> Result<usize> {
            match object.get(key) {
                None => default.ok_or_else(|| bad(key, "missing".into())),
                Some(v) => v
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(key, format!("{v} is not a whole number"))),
            }
        };
        let text_key = |key: &str, default: &str| -> Result<String> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(v) => v
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(key, format!("{v} is not a string"))),
            }
        };
        let model_type = text_key("model_type", "bert")?;
        if !MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(bad(
                "model_type",
                format!(
                    "{model_type:?} is not supported (this encoder is {})",
                    MODEL_TYPES.join(", ")
                ),
            ));
        }
        let act = text_key("hidden_act", "gelu")?;
        let hidden_act = Activation::from_name(&act).ok_or_else(|| {
            bad(
                "hidden_act",
                format!("{act:?} is not supported (gelu, gelu_new, gelu_fast, gelu_pytorch_tanh)"),
            )
        })?;
        let positions = text_key("position_embedding_type", "absolute")?;
        if positions != "absolute" {
            return Err(bad(
                "position_embedding_type",
                format!("{positions:?} is not supported (absolute only)"),
            ));
        }
        let layer_norm_eps = match object.get("layer_norm_eps") {
            None => 1e-12,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("layer_norm_eps", format!("{v} is not a number")))?,
        };
        let config = Self {
            model_type,
            vocab_size: count("vocab_size", None)?,
            hidden_size: count("hidden_size", None)?,
            num_hidden_layers: count("num_hidden_layers", None)?,
            num_attention_heads: count("num_attention_heads", None)?,
            intermediate_size: count("intermediate_size", None)?,
            max_position_embeddings: count("max_position_embeddings", None)?,
            type_vocab_size: count("type_vocab_size", Some(2))?,
            layer_norm_eps,
            hidden_act,
            pad_token_id: count("pad_token_id", Some(0))?,
        };
        config
            .validate()
            .map_err(|e| bad("(sizes)", e.to_string()))?;
        Ok(config)
    }

    /// The `config.json` text Hugging Face's loaders read back as this encoder.
    pub fn to_json(&self) -> String {
        let architecture = if self.model_type == "bert" {
            "BertModel"
        } else {
            "RobertaModel"
        };
        let mut map = Map::new();
        map.insert("architectures".into(), Value::from(vec![architecture]));
        map.insert("model_type".into(), Value::from(self.model_type.clone()));
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
            ("pad_token_id", self.pad_token_id),
        ] {
            map.insert(key.into(), Value::from(value));
        }
        map.insert("layer_norm_eps".into(), Value::from(self.layer_norm_eps));
        map.insert("hidden_act".into(), Value::from(self.hidden_act.name()));
        map.insert("position_embedding_type".into(), Value::from("absolute"));
        serde_json::to_string_pretty(&Value::Object(map)).expect("a JSON object serialises")
    }
}

/// How the head summarises the last layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's vector (`[CLS]` / `<s>`), as the seeds' BERT classifier uses it.
    Cls,
    /// The mean over the unpadded tokens, as sentence-transformers pools MiniLM.
    Mean,
}

/// The classification head: how many classes, and the pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub classes: usize,
    pub pooling: Pooling,
}

/// What [`BertClassifier::load_weights`] took from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Encoder tensors copied (all of them, or loading fails).
    pub encoder: usize,
    /// Whether the head came from the file too (a `classifier.*` of the head's shape); otherwise it
    /// keeps its seeded initial values.
    pub head: bool,
    /// Tensors of the file the model does not use (a pooler, a masked-LM head).
    pub unused: usize,
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

/// A BERT-family encoder with a classification head.
pub struct BertClassifier {
    word: Var,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    classifier: Dense,
    config: BertConfig,
    head: Head,
    params: SeededVarMap,
    /// Training or evaluation mode (spectral norm's power iteration runs only in training).
    pub mode: Mode,
}

/// A parameter and its name in the checkpoint's layout.
type NamedVar = (String, Var);

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

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

impl BertClassifier {
    /// A model with weights drawn from `seed` (embeddings N(0, 0.02^2), dense layers as
    /// `candle_nn::linear`, layer norms 1 and 0).
    pub fn new(
        config: BertConfig,
        head: Head,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        crate::error::check_count("head.classes", head.classes)?;
        let params = SeededVarMap::new(seed);
        let vb = params.var_builder(dtype, device);
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        // The seeded draws happen in creation order: the layers, then the embeddings, then the
        // head (the order the experiments' published results were drawn in).
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let attention = l.pp("attention");
            layers.push(Layer {
                query: Dense::new(d, d, attention.pp("self.query"))?,
                key: Dense::new(d, d, attention.pp("self.key"))?,
                value: Dense::new(d, d, attention.pp("self.value"))?,
                attention_out: Dense::new(d, d, attention.pp("output.dense"))?,
                attention_norm: LayerNorm::load(d, eps, attention.pp("output.LayerNorm"))?,
                up: Dense::new(d, config.intermediate_size, l.pp("intermediate.dense"))?,
                down: Dense::new(config.intermediate_size, d, l.pp("output.dense"))?,
                output_norm: LayerNorm::load(d, eps, l.pp("output.LayerNorm"))?,
            });
        }
        let emb = vb.pp("embeddings");
        embedding(&emb, config.vocab_size, d, "word_embeddings")?;
        let position = embedding(
            &emb,
            config.max_position_embeddings,
            d,
            "position_embeddings",
        )?;
        let token_type = embedding(&emb, config.type_vocab_size, d, "token_type_embeddings")?;
        let embedding_norm = LayerNorm::load(d, eps, emb.pp("LayerNorm"))?;
        let classifier = Dense::new(d, head.classes, vb.pp("classifier"))?;
        let word = params
            .named_vars()
            .into_iter()
            .find(|(name, _)| name == WORD_EMBEDDINGS)
            .map(|(_, v)| v)
            .expect("the word embeddings were just created");
        Ok(Self {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            classifier,
            config,
            head,
            params,
            mode: Mode::default(),
        })
    }

    /// A model from a Hugging Face directory: `config.json` and `model.safetensors` (tensor names as
    /// BERT's, with or without a `bert.` / `roberta.` prefix, layer norms as `weight`/`bias` or
    /// `gamma`/`beta`). The head is loaded when the file has one of its shape, drawn from `seed`
    /// otherwise.
    pub fn from_pretrained(
        dir: &Path,
        head: Head,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Loaded)> {
        let config_file = dir.join("config.json");
        let weights = dir.join("model.safetensors");
        for file in [&config_file, &weights] {
            if !file.is_file() {
                let bin = dir.join("pytorch_model.bin");
                let fix = if file == &weights && bin.is_file() {
                    "only safetensors weights are read: save the model with transformers' \
                     `save_pretrained(dir, safe_serialization=True)`"
                } else {
                    "pass a Hugging Face model directory with config.json and model.safetensors \
                     (scripts/setup.sh fetches all-MiniLM-L6-v2)"
                };
                return Err(Error::data(
                    file.display(),
                    None,
                    "missing from the model directory",
                    fix,
                ));
            }
        }
        let config = BertConfig::from_file(&config_file)?;
        let model = Self::new(config, head, seed, dtype, device)?;
        let loaded = model.load_weights(&weights)?;
        Ok((model, loaded))
    }

    /// Copies every encoder weight from a safetensors file, and the head's when the file has a
    /// `classifier.weight` / `classifier.bias` of its shape. A missing or misshapen encoder tensor is
    /// an error naming it.
    pub fn load_weights(&self, path: &Path) -> Result<Loaded> {
        let shown = path.display().to_string();
        let tensors = candle_core::safetensors::load(path, self.word.device()).map_err(|e| {
            Error::data(
                &shown,
                None,
                format!("cannot read safetensors: {e}"),
                "pass a model.safetensors file (scripts/setup.sh downloads MiniLM's and checks its sha256)",
            )
        })?;
        let prefixes = [
            String::new(),
            "bert.".into(),
            "roberta.".into(),
            format!("{}.", self.config.model_type),
        ];
        let prefix = prefixes
            .iter()
            .find(|p| tensors.contains_key(&format!("{p}{WORD_EMBEDDINGS}")))
            .ok_or_else(|| {
                Error::data(
                    &shown,
                    None,
                    format!(
                        "no tensor {WORD_EMBEDDINGS} (with or without a bert. or roberta. prefix)"
                    ),
                    "use a BERT-family checkpoint (BERT, RoBERTa, MiniLM)",
                )
            })?;
        let (head_vars, encoder_vars): (Vec<NamedVar>, Vec<NamedVar>) = self
            .params
            .named_vars()
            .into_iter()
            .partition(|(name, _)| name.starts_with("classifier."));
        for (name, var) in &encoder_vars {
            let mut names = vec![format!("{prefix}{name}")];
            if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
                names.push(format!("{prefix}{stem}LayerNorm.gamma"));
            }
            if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
                names.push(format!("{prefix}{stem}LayerNorm.beta"));
            }
            let Some(t) = names.iter().find_map(|n| tensors.get(n)) else {
                return Err(Error::data(
                    &shown,
                    None,
                    format!("no tensor named {}", names[0]),
                    "use a checkpoint of the encoder its config.json describes",
                ));
            };
            if t.dims() != var.dims() {
                return Err(Error::data(
                    &shown,
                    None,
                    format!(
                        "tensor {} has shape {:?}; config.json implies {:?}",
                        names[0],
                        t.dims(),
                        var.dims()
                    ),
                    "use the config.json that came with these weights",
                ));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        // The head only as a whole, and only at its shape (another task's head is left out).
        let head_tensors: Option<Vec<&Tensor>> = head_vars
            .iter()
            .map(|(name, var)| tensors.get(name).filter(|t| t.dims() == var.dims()))
            .collect();
        let head = head_tensors.is_some();
        for ((_, var), t) in head_vars.iter().zip(head_tensors.unwrap_or_default()) {
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        let used = encoder_vars.len() + if head { head_vars.len() } else { 0 };
        Ok(Loaded {
            encoder: encoder_vars.len(),
            head,
            unused: tensors.len() - used,
        })
    }

    /// Writes `config.json` and `model.safetensors` (every weight, head included, no prefix) to
    /// `dir`, creating it: [`Self::from_pretrained`] and Hugging Face's loaders read them back.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path, e: std::io::Error| {
            Error::data(
                path.display(),
                None,
                format!("cannot write: {e}"),
                "pass a writable folder",
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let config_file = dir.join("config.json");
        std::fs::write(&config_file, self.config.to_json()).map_err(|e| io(&config_file, e))?;
        let tensors: HashMap<String, Tensor> = self
            .params
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// The feed-forward layers and the head divided by their spectral norms from now on (the
    /// experiments' "spectral norm" runs); `rng` draws the power iterations' starts. Attention, the
    /// layer norms and the embeddings stay as they are, so this does not bound the model's
    /// Lipschitz constant (book, "L-constraint").
    pub fn spectrally_normalised(mut self, rng: &mut Rng) -> Result<Self> {
        for layer in &mut self.layers {
            layer.up.normalise(rng)?;
            layer.down.normalise(rng)?;
        }
        self.classifier.normalise(rng)?;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The head.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The word-embedding matrix `(vocab_size, hidden_size)`: the target of the seeds' matrix-level
    /// FGM ([`crate::Target::in_place`], or [`crate::Target::embedding_matrix`] with
    /// [`Self::embed_with`]).
    pub fn word_embeddings(&self) -> &Var {
        &self.word
    }

    /// Word embeddings of `ids` `(b, n)`: `(b, n, hidden)`, the embedding-output target.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_with(self.word.as_tensor(), ids)
    }

    /// Word embeddings of `ids` looked up in `matrix` (the word-embedding matrix, perturbed or not).
    pub fn embed_with(&self, matrix: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let shape_error = |expected: String| Error::ShapeMismatch {
            name: "ids",
            expected,
            got: ids.dims().to_vec(),
        };
        let (b, n) = ids
            .dims2()
            .map_err(|_| shape_error("(batch, tokens)".into()))?;
        if b * n == 0 {
            return Err(Error::EmptyBatch {
                name: "ids",
                detail: format!("has shape {:?}", ids.dims()),
            });
        }
        let max_tokens = self.config.max_tokens();
        if n > max_tokens {
            return Err(shape_error(format!(
                "at most {max_tokens} tokens (the position embeddings)"
            )));
        }
        crate::error::check_indices("ids", ids)?;
        let flat = ids.flatten_all()?;
        let largest = flat.to_dtype(DType::U32)?.max(0)?.to_scalar::<u32>()? as usize;
        if largest >= self.config.vocab_size {
            return Err(Error::InvalidArgument {
                name: "ids",
                reason: format!(
                    "token id {largest} is outside the vocabulary of {} tokens",
                    self.config.vocab_size
                ),
                fix: "tokenize with the model's own tokenizer (its tokenizer.json or vocab.txt)"
                    .into(),
            });
        }
        Ok(crate::fused::embedding(matrix, ids)?)
    }

    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        key_bias: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let q = layer.query.forward(h, train)?;
        let k = layer.key.forward(h, train)?;
        let v = layer.value.forward(h, train)?;
        let heads = self.config.num_attention_heads;
        let context = crate::fused::attention(&q, &k, &v, Some(key_bias), heads)?;
        layer.attention_out.forward(&context, train)
    }

    /// [`Self::attention`] on a jet.
    fn attention_jet(&self, layer: &Layer, h: &Jet, key_bias: &Tensor, train: bool) -> Result<Jet> {
        let (b, n, d) = h.primal().dims3()?;
        let heads = self.config.num_attention_heads;
        let split = |x: Jet| -> Result<Jet> {
            Ok(x.map_linear(|t| {
                t.reshape((b, n, heads, d / heads))?
                    .transpose(1, 2)?
                    .contiguous()
            })?)
        };
        let q = split(layer.query.forward_jet(h, train)?)?;
        let k = split(layer.key.forward_jet(h, train)?)?;
        let v = split(layer.value.forward_jet(h, train)?)?;
        let scale = 1.0 / ((d / heads) as f64).sqrt();
        let keys = k.map_linear(|t| t.t()?.contiguous())?;
        let scores = q
            .matmul(&keys)?
            .affine(scale, 0.0)?
            .broadcast_add_constant(key_bias)?;
        let context = scores
            .softmax_last_dim()?
            .matmul(&v)?
            .map_linear(|t| t.transpose(1, 2)?.reshape((b, n, d)))?;
        layer.attention_out.forward_jet(&context, train)
    }

    fn check_mask(&self, e: &Tensor, mask: &Tensor) -> Result<()> {
        let (b, n, _) = e.dims3().map_err(|_| Error::ShapeMismatch {
            name: "e",
            expected: format!("(batch, tokens, {})", self.config.hidden_size),
            got: e.dims().to_vec(),
        })?;
        if mask.dims() != [b, n] {
            return Err(Error::ShapeMismatch {
                name: "mask",
                expected: format!("({b}, {n}): 1 at tokens, 0 at padding"),
                got: mask.dims().to_vec(),
            });
        }
        if mask.dtype() != e.dtype() {
            return Err(Error::DTypeMismatch {
                name: "mask",
                expected: e.dtype(),
                got: mask.dtype(),
            });
        }
        let max_tokens = self.config.max_tokens();
        if n > max_tokens {
            return Err(Error::ShapeMismatch {
                name: "e",
                expected: format!("at most {max_tokens} tokens (the position embeddings)"),
                got: e.dims().to_vec(),
            });
        }
        // Values where they can be read in place, as `Target::embedding_output` does.
        if mask.device().is_cpu() {
            crate::target::check_mask(mask)?;
        }
        Ok(())
    }

    /// The last layer `(b, n, hidden)` from word embeddings `e` `(b, n, hidden)` and the padding
    /// mask `(b, n)` (1 at tokens, 0 at padding; the embeddings' dtype).
    pub fn hidden_states(&self, e: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.check_mask(e, mask)?;
        let train = self.mode.is_train();
        let n = e.dim(1)?;
        let position = self.position.narrow(0, self.config.position_offset(), n)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let embedded = e.broadcast_add(&position)?.broadcast_add(&token_type)?;
        let mut h = self.embedding_norm.forward_fused(&embedded)?;
        // Padded keys get a large negative score: their attention weight underflows to zero.
        let key_bias = ((mask.unsqueeze(1)?.unsqueeze(1)? - 1.0)? * 1e4)?;
        for layer in &self.layers {
            let a = self.attention(layer, &h, &key_bias, train)?;
            h = layer.attention_norm.forward_fused(&(h + a)?)?;
            let up = self
                .config
                .hidden_act
                .apply(&layer.up.forward(&h, train)?)?;
            let f = layer.down.forward(&up, train)?;
            h = layer.output_norm.forward_fused(&(h + f)?)?;
        }
        Ok(h)
    }

    /// [`Self::hidden_states`] on a jet of the word embeddings (Taylor mode, [`crate::jet`]).
    pub fn hidden_states_jet(&self, e: &Jet, mask: &Tensor) -> Result<Jet> {
        self.check_mask(e.primal(), mask)?;
        let train = self.mode.is_train();
        let n = e.primal().dim(1)?;
        let position = self.position.narrow(0, self.config.position_offset(), n)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let embedded = e
            .broadcast_add_constant(&position)?
            .broadcast_add_constant(&token_type)?;
        let mut h = self.embedding_norm.forward_jet(&embedded)?;
        let key_bias = ((mask.unsqueeze(1)?.unsqueeze(1)? - 1.0)? * 1e4)?;
        for layer in &self.layers {
            let a = self.attention_jet(layer, &h, &key_bias, train)?;
            h = layer.attention_norm.forward_jet(&h.add(&a)?)?;
            let up = self
                .config
                .hidden_act
                .apply_jet(&layer.up.forward_jet(&h, train)?)?;
            let f = layer.down.forward_jet(&up, train)?;
            h = layer.output_norm.forward_jet(&h.add(&f)?)?;
        }
        Ok(h)
    }

    /// [`Self::logits_from_embeddings`] on a jet of the word embeddings.
    pub fn logits_from_embeddings_jet(&self, e: &Jet, mask: &Tensor) -> Result<Jet> {
        let h = self.hidden_states_jet(e, mask)?;
        let pooled = match self.head.pooling {
            Pooling::Cls => h.map_linear(|t| t.narrow(1, 0, 1)?.squeeze(1))?,
            Pooling::Mean => h.map_linear(|t| Ok(masked_mean(t, mask)?))?,
        };
        self.classifier.forward_jet(&pooled, self.mode.is_train())
    }

    /// The head's summary `(b, hidden)` of the last layer ([`Pooling`]).
    pub fn pooled_from_embeddings(&self, e: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = self.hidden_states(e, mask)?;
        match self.head.pooling {
            Pooling::Cls => Ok(h.narrow(1, 0, 1)?.squeeze(1)?),
            Pooling::Mean => masked_mean(&h, mask),
        }
    }

    /// The class scores `(b, classes)` from word embeddings `e`: the rest of the model after the
    /// embedding-output target.
    pub fn logits_from_embeddings(&self, e: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let pooled = self.pooled_from_embeddings(e, mask)?;
        self.classifier.forward(&pooled, self.mode.is_train())
    }

    /// The class scores `(b, classes)` of token ids `(b, n)` with their padding mask `(b, n)`.
    pub fn logits(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.logits_from_embeddings(&self.embed(ids)?, mask)
    }

    /// The sentence embedding of sentence-transformers: the mean-pooled last layer, L2-normalised,
    /// whatever the head's pooling. For all-MiniLM-L6-v2 this is the published embedding.
    pub fn sentence_embedding(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let pooled = masked_mean(&self.hidden_states(&self.embed(ids)?, mask)?, mask)?;
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

/// The mean over unpadded positions of `h` `(b, n, d)` with `mask` `(b, n)`.
fn masked_mean(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    Ok(h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?)
}
