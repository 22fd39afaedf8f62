//! advtrain's side of the side-by-side benchmark against JAX (`scripts/side-by-side.sh`).
//!
//! Two models, f32 on the CPU, each in two variants: `candle` (`candle_nn::Linear`, candle's own
//! GELU, the composite layer norm and softmax of [`advtrain::ops`], candle's batched matmul for the
//! attention, `index_select` for the embedding lookup, `candle_nn`'s cross-entropy) and `fused`
//! (the same model with [`advtrain::fused`], linear layers, attention and lookup included):
//! * `mlp`: 512-512-512-10, GELU (erf), softmax cross-entropy, batch 256, input target;
//! * `embedding`: vocabulary 5,000, width 128, 32 tokens, batch 32; two pre-norm transformer blocks
//!   (single-head self-attention, feed-forward 128-512-128 with GELU), a final layer norm, masked mean
//!   pool, 10 classes; FGM and the rest act on the embedding output;
//! * `cnn`: the experiments' MNIST model, [`advtrain::models::Cnn`] (two 5x5 stride-2 convolutions
//!   16 and 32 wide with GELU, a dense classifier), 28 x 28 images, batch 64, input target;
//! * `minilm`: a MiniLM-sized encoder, [`advtrain::models::BertClassifier`] with
//!   [`BertConfig::minilm`] (6 post-norm layers, width 384, 12 heads, feed-forward 1,536, GELU),
//!   random weights, 64 tokens, batch 8 (`MINILM_BATCH` overrides it: the trained Hutchinson step
//!   keeps a 10 GB graph at 8), mean pooling, 10 classes; the methods act on the word-embedding
//!   output.
//!
//! The last two are the library's own models, on the fused ops only: they run as variant `fused`.
//!
//! Steps: `plain` (the library's [`Plain`]: loss and the weights' gradients by a first-order
//! backward pass), `fgm` (eps 0.5, clean + adversarial),
//! `gradient_penalty` (eps 0.5, double backward), `hutchinson_1` (sigma 0.1, one Rademacher probe,
//! trained through, reverse over reverse), and `hutchinson_taylor` (the same step by Taylor mode,
//! [`advtrain::jet`]: each model's jet form, variant `fused` only; JAX's `hutchinson_1` is its
//! counterpart). `scripts/side_by_side_jax.py` builds the same models and steps in JAX.
//!
//! The timed steps run on a worker of advtrain's thread pool ([`fused::in_worker_pool`], what the
//! experiments do); `ADVTRAIN_POOL=0` runs them on the main thread instead, to measure the difference.
//!
//! Plain and FGM steps also run with second order off (`CANDLE_GRAD_DO_NOT_DETACH=0`): the driver
//! measures what the switch costs first-order methods.
//!
//! With `--worker`, it reads lines `model variant method steps` on stdin and answers each with the
//! milliseconds the steps took in all; `scripts/side_by_side.py` drives it and the JAX worker in
//! turn. Without, `cargo bench --bench side_by_side` prints advtrain's own table (candle vs fused).

use advtrain::init::SeededVarMap;
use advtrain::models::{BertClassifier, BertConfig, Cnn, Head, Pooling};
use advtrain::{Batch, Method, Plain};
use advtrain::{CurvatureMethod, Fgm, GradientPenalty, Jet, Laplacian, Rng, Target, fused, ops};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear};
use std::io::{BufRead, Write};
use std::time::Instant;

type Unary = fn(&Tensor) -> candle_core::Result<Tensor>;
type Norm = fn(&Tensor, Option<&Tensor>, Option<&Tensor>, f64) -> candle_core::Result<Tensor>;
type Loss = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
type Layer = fn(&Tensor, &Linear) -> candle_core::Result<Tensor>;
/// Single-head attention of queries, keys and values `(batch, tokens, width)` with a key bias
/// `(batch, 1, tokens)`.
type Attention = fn(&Tensor, &Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
/// The rows of an embedding matrix at ids `(batch, tokens)`: `(batch, tokens, width)`.
type Lookup = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// The elementwise and row-wise operations a variant uses.
#[derive(Clone, Copy)]
struct Ops {
    linear: Layer,
    gelu: Unary,
    layer_norm: Norm,
    attention: Attention,
    embedding: Lookup,
    cross_entropy: Loss,
}

fn candle_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.gelu_erf()
}

fn candle_linear(x: &Tensor, layer: &Linear) -> candle_core::Result<Tensor> {
    layer.forward(x)
}

fn fused_linear(x: &Tensor, layer: &Linear) -> candle_core::Result<Tensor> {
    fused::linear(x, layer.weight(), layer.bias())
}

/// candle's batched matmul, the transposed keys and the composite softmax.
fn candle_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * (1.0 / (WIDTH as f64).sqrt()))?;
    ops::softmax_last_dim(&scores.broadcast_add(key_bias)?)?.matmul(v)
}

fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
) -> candle_core::Result<Tensor> {
    fused::attention(q, k, v, Some(&key_bias.unsqueeze(1)?), 1)
}

fn candle_embedding(matrix: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n) = ids.dims2()?;
    matrix
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, n, matrix.dim(1)?))
}

fn candle_cross_entropy(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::loss::cross_entropy(z, y)
}

const CANDLE: Ops = Ops {
    linear: candle_linear,
    gelu: candle_gelu,
    layer_norm: ops::layer_norm,
    attention: candle_attention,
    embedding: candle_embedding,
    cross_entropy: candle_cross_entropy,
};

const FUSED: Ops = Ops {
    linear: fused_linear,
    gelu: fused::gelu_erf,
    layer_norm: fused::layer_norm,
    attention: fused_attention,
    embedding: fused::embedding,
    cross_entropy: fused::cross_entropy,
};

fn ops(variant: &str) -> Option<Ops> {
    match variant {
        "candle" => Some(CANDLE),
        "fused" => Some(FUSED),
        _ => None,
    }
}

type Result<T> = advtrain::Result<T>;

struct Mlp {
    layers: Vec<Linear>,
    x: Tensor,
    y: Tensor,
}

impl Mlp {
    fn new(vb: &VarBuilder, rng: &mut Rng) -> Result<Self> {
        let widths = [512, 512, 512, 10];
        let layers = (0..3)
            .map(|i| linear(widths[i], widths[i + 1], vb.pp(format!("mlp{i}"))))
            .collect::<candle_core::Result<_>>()?;
        let x = rng.normal((256, 512), DType::F32, &Device::Cpu)?;
        let y = labels(256, rng)?;
        Ok(Self { layers, x, y })
    }

    fn loss(&self, ops: Ops, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = (ops.linear)(&h, layer)?;
            if i + 1 < self.layers.len() {
                h = (ops.gelu)(&h)?;
            }
        }
        Ok((ops.cross_entropy)(&h, &self.y)?)
    }

    /// The same loss as a function of a jet of `x` (Taylor mode, fused ops).
    fn loss_jet(&self, x: &Jet) -> candle_core::Result<Jet> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = h.linear(layer.weight(), layer.bias())?;
            if i + 1 < self.layers.len() {
                h = h.gelu_erf()?;
            }
        }
        h.cross_entropy(&self.y)
    }
}

struct Block {
    norm1: (Tensor, Tensor),
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    norm2: (Tensor, Tensor),
    up: Linear,
    down: Linear,
}

struct Embedding {
    matrix: Tensor,
    blocks: Vec<Block>,
    norm: (Tensor, Tensor),
    classifier: Linear,
    ids: Tensor,
    mask: Tensor,
    y: Tensor,
}

const WIDTH: usize = 128;

fn norm_params(vb: &VarBuilder) -> Result<(Tensor, Tensor)> {
    let w = vb.get_with_hints(WIDTH, "weight", candle_nn::Init::Const(1.0))?;
    let b = vb.get_with_hints(WIDTH, "bias", candle_nn::Init::Const(0.0))?;
    Ok((w, b))
}

impl Embedding {
    fn new(vb: &VarBuilder, rng: &mut Rng) -> Result<Self> {
        let (batch, tokens, vocab) = (32, 32, 5000);
        let matrix = vb.get_with_hints(
            (vocab, WIDTH),
            "embedding",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let blocks = (0..2)
            .map(|i| {
                let vb = vb.pp(format!("block{i}"));
                Ok(Block {
                    norm1: norm_params(&vb.pp("norm1"))?,
                    query: linear(WIDTH, WIDTH, vb.pp("query"))?,
                    key: linear(WIDTH, WIDTH, vb.pp("key"))?,
                    value: linear(WIDTH, WIDTH, vb.pp("value"))?,
                    out: linear(WIDTH, WIDTH, vb.pp("out"))?,
                    norm2: norm_params(&vb.pp("norm2"))?,
                    up: linear(WIDTH, 4 * WIDTH, vb.pp("up"))?,
                    down: linear(4 * WIDTH, WIDTH, vb.pp("down"))?,
                })
            })
            .collect::<Result<_>>()?;
        let (ids, mask) = random_tokens(batch, tokens, vocab, rng)?;
        Ok(Self {
            matrix,
            blocks,
            norm: norm_params(&vb.pp("norm"))?,
            classifier: linear(WIDTH, 10, vb.pp("classifier"))?,
            ids,
            mask,
            y: labels(batch, rng)?,
        })
    }

    fn embed(&self, ops: Ops) -> Result<Tensor> {
        Ok((ops.embedding)(&self.matrix, &self.ids)?)
    }

    fn loss(&self, ops: Ops, e: &Tensor) -> Result<Tensor> {
        let norm =
            |x: &Tensor, (w, b): &(Tensor, Tensor)| (ops.layer_norm)(x, Some(w), Some(b), 1e-5);
        let key_bias = ((self.mask.unsqueeze(1)? - 1.0)? * 1e4)?;
        let mut h = e.clone();
        for block in &self.blocks {
            let x = norm(&h, &block.norm1)?;
            let linear = |x: &Tensor, layer: &Linear| (ops.linear)(x, layer);
            let context = (ops.attention)(
                &linear(&x, &block.query)?,
                &linear(&x, &block.key)?,
                &linear(&x, &block.value)?,
                &key_bias,
            )?;
            h = (h + linear(&context, &block.out)?)?;
            let x = norm(&h, &block.norm2)?;
            h = (&h + linear(&(ops.gelu)(&linear(&x, &block.up)?)?, &block.down)?)?;
        }
        let h = norm(&h, &self.norm)?;
        let m = self.mask.unsqueeze(2)?;
        let pooled = h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
        Ok((ops.cross_entropy)(
            &(ops.linear)(&pooled, &self.classifier)?,
            &self.y,
        )?)
    }

    /// The same loss as a function of a jet of the embedding output (Taylor mode, fused ops).
    fn loss_jet(&self, e: &Jet) -> candle_core::Result<Jet> {
        let norm = |x: &Jet, (w, b): &(Tensor, Tensor)| x.layer_norm(Some(w), Some(b), 1e-5);
        let linear = |x: &Jet, layer: &Linear| x.linear(layer.weight(), layer.bias());
        let key_bias = ((self.mask.unsqueeze(1)? - 1.0)? * 1e4)?;
        let mut h = e.clone();
        for block in &self.blocks {
            let x = norm(&h, &block.norm1)?;
            let keys = linear(&x, &block.key)?.map_linear(|t| t.t())?;
            let scores = linear(&x, &block.query)?
                .matmul(&keys)?
                .affine(1.0 / (WIDTH as f64).sqrt(), 0.0)?;
            let attention = scores
                .broadcast_add_constant(&key_bias)?
                .softmax_last_dim()?;
            let values = linear(&x, &block.value)?;
            h = h.add(&linear(&attention.matmul(&values)?, &block.out)?)?;
            let x = norm(&h, &block.norm2)?;
            h = h.add(&linear(&linear(&x, &block.up)?.gelu_erf()?, &block.down)?)?;
        }
        let m = self.mask.unsqueeze(2)?;
        let count = m.sum(1)?;
        let pooled = norm(&h, &self.norm)?
            .map_linear(|t| t.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count))?;
        linear(&pooled, &self.classifier)?.cross_entropy(&self.y)
    }
}

/// Random ids in `1..vocab` and their mask: each row a random length in `1..=tokens`, then padding.
fn random_tokens(
    batch: usize,
    tokens: usize,
    vocab: usize,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor)> {
    let mut ids = vec![0u32; batch * tokens];
    let mut mask = vec![0f32; batch * tokens];
    for row in 0..batch {
        let length = 1 + (rng.uniform_f64(0.0, tokens as f64) as usize).min(tokens - 1);
        for t in 0..length {
            ids[row * tokens + t] = 1 + rng.uniform_f64(0.0, (vocab - 1) as f64) as u32;
            mask[row * tokens + t] = 1.0;
        }
    }
    Ok((
        Tensor::from_vec(ids, (batch, tokens), &Device::Cpu)?,
        Tensor::from_vec(mask, (batch, tokens), &Device::Cpu)?,
    ))
}

fn labels(batch: usize, rng: &mut Rng) -> Result<Tensor> {
    let y: Vec<u32> = (0..batch)
        .map(|_| (rng.uniform_f64(0.0, 10.0) as u32).min(9))
        .collect();
    Ok(Tensor::from_vec(y, batch, &Device::Cpu)?)
}

type JetLoss<'a> = &'a dyn Fn(&Jet) -> candle_core::Result<Jet>;

/// The jet form where the variant is the fused one (the jet rules are built on the fused ops).
fn fused_only<'a>(variant: &str, jet: JetLoss<'a>) -> Option<JetLoss<'a>> {
    (variant == "fused").then_some(jet)
}

/// One step of `method` at `target` with `loss`; returns the loss value.
fn step(
    method: &str,
    target: &Target,
    loss: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    jet: Option<JetLoss>,
    rng: &mut Rng,
) -> Result<f32> {
    let step = match method {
        // The library's plain step: one forward pass and a first-order backward
        // (`fused::backward_first_order`), what a training loop running `Plain` gets.
        "plain" => Plain.step(&Batch::new(target, loss), &mut Rng::new(0))?,
        "fgm" => Fgm::new(0.5)?.step(&Batch::new(target, loss), &mut Rng::new(0))?,
        "gradient_penalty" => {
            GradientPenalty::new(0.5)?.step(&Batch::new(target, loss), &mut Rng::new(0))?
        }
        "hutchinson_1" => Laplacian::new(0.1)?.step(&Batch::new(target, loss), rng)?,
        "hutchinson_taylor" => {
            let jet = jet.ok_or_else(|| advtrain::Error::InvalidArgument {
                name: "variant",
                reason: "Taylor mode runs on the fused ops' jet rules".into(),
                fix: "ask for variant fused".into(),
            })?;
            Laplacian::new(0.1)?
                .with_method(CurvatureMethod::Taylor)?
                .step(&Batch::new(target, loss).with_jet(jet), rng)?
        }
        other => {
            return Err(advtrain::Error::InvalidArgument {
                name: "method",
                reason: format!("unknown method {other}"),
                fix: "plain, fgm, gradient_penalty, hutchinson_1 or hutchinson_taylor".into(),
            });
        }
    };
    std::hint::black_box(&step.grads);
    Ok(step.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// The experiments' CNN on a batch of random images.
struct Images {
    model: Cnn,
    x: Tensor,
    y: Tensor,
}

impl Images {
    fn new(rng: &mut Rng) -> Result<Self> {
        Ok(Self {
            model: Cnn::new(3, 10, DType::F32, &Device::Cpu)?,
            x: rng.uniform(
                0.0,
                1.0,
                (64, Cnn::SIDE * Cnn::SIDE),
                DType::F32,
                &Device::Cpu,
            )?,
            y: labels(64, rng)?,
        })
    }
}

/// The MiniLM-sized encoder on a batch of random ids, padded to 64 tokens.
struct Encoder {
    model: BertClassifier,
    ids: Tensor,
    mask: Tensor,
    y: Tensor,
}

impl Encoder {
    fn new(rng: &mut Rng) -> Result<Self> {
        let batch = std::env::var("MINILM_BATCH")
            .ok()
            .and_then(|b| b.parse::<usize>().ok())
            .unwrap_or(8);
        let tokens = 64;
        let config = BertConfig::minilm();
        let vocab = config.vocab_size;
        let head = Head {
            classes: 10,
            pooling: Pooling::Mean,
        };
        let model = BertClassifier::new(config, head, 4, DType::F32, &Device::Cpu)?;
        let (ids, mask) = random_tokens(batch, tokens, vocab, rng)?;
        Ok(Self {
            model,
            ids,
            mask,
            y: labels(batch, rng)?,
        })
    }
}

struct Bench {
    mlp: Mlp,
    embedding: Embedding,
    cnn: Option<Images>,
    minilm: Option<Encoder>,
    rng: Rng,
    /// Whether the timed steps run on a worker of the thread pool ([`fused::in_worker_pool`], the
    /// default), or on the main thread (`ADVTRAIN_POOL=0`, to measure the difference).
    in_pool: bool,
    _params: SeededVarMap,
}

impl Bench {
    fn new() -> Result<Self> {
        let params = SeededVarMap::new(1);
        let vb = params.var_builder(DType::F32, &Device::Cpu);
        let mut rng = Rng::new(2);
        Ok(Self {
            mlp: Mlp::new(&vb, &mut rng)?,
            embedding: Embedding::new(&vb, &mut rng)?,
            cnn: None,
            minilm: None,
            rng,
            in_pool: std::env::var("ADVTRAIN_POOL").map_or(true, |v| v != "0"),
            _params: params,
        })
    }

    /// The library's models are built on first use (MiniLM's embedding matrix alone is 47 MB).
    fn library_model(&mut self, model: &str, variant: &str) -> Result<()> {
        if variant != "fused" {
            return Err(advtrain::Error::InvalidArgument {
                name: "variant",
                reason: format!("{model} is a library model, on the fused ops only"),
                fix: "ask for variant fused".into(),
            });
        }
        if model == "cnn" && self.cnn.is_none() {
            self.cnn = Some(Images::new(&mut self.rng)?);
        }
        if model == "minilm" && self.minilm.is_none() {
            self.minilm = Some(Encoder::new(&mut self.rng)?);
        }
        Ok(())
    }

    fn run(&mut self, model: &str, variant: &str, method: &str) -> Result<f32> {
        if let "cnn" | "minilm" = model {
            self.library_model(model, variant)?;
        }
        let ops = ops(variant).ok_or_else(|| advtrain::Error::InvalidArgument {
            name: "variant",
            reason: format!("unknown variant {variant}"),
            fix: "candle or fused".into(),
        })?;
        match model {
            "mlp" => {
                let mlp = &self.mlp;
                let loss = |x: &Tensor| mlp.loss(ops, x).map_err(candle_core::Error::from);
                let jet = |x: &Jet| mlp.loss_jet(x);
                let jet = fused_only(variant, &jet);
                step(method, &Target::input(&mlp.x)?, &loss, jet, &mut self.rng)
            }
            "embedding" => {
                let model = &self.embedding;
                let loss = |e: &Tensor| model.loss(ops, e).map_err(candle_core::Error::from);
                let e = model.embed(ops)?;
                let target = Target::embedding_output(&e, Some(&model.mask))?;
                let jet = |e: &Jet| model.loss_jet(e);
                let jet = fused_only(variant, &jet);
                step(method, &target, &loss, jet, &mut self.rng)
            }
            "cnn" => {
                let images = self.cnn.as_ref().expect("built above");
                let loss = |x: &Tensor| {
                    fused::cross_entropy(
                        &images.model.logits(x).map_err(candle_core::Error::from)?,
                        &images.y,
                    )
                };
                let jet = |x: &Jet| {
                    images
                        .model
                        .logits_jet(x)
                        .map_err(candle_core::Error::from)?
                        .cross_entropy(&images.y)
                };
                step(
                    method,
                    &Target::input(&images.x)?,
                    &loss,
                    Some(&jet),
                    &mut self.rng,
                )
            }
            "minilm" => {
                let encoder = self.minilm.as_ref().expect("built above");
                let loss = |e: &Tensor| {
                    let logits = encoder
                        .model
                        .logits_from_embeddings(e, &encoder.mask)
                        .map_err(candle_core::Error::from)?;
                    fused::cross_entropy(&logits, &encoder.y)
                };
                let e = encoder.model.embed(&encoder.ids)?;
                let target = Target::embedding_output(&e, Some(&encoder.mask))?;
                let jet = |e: &Jet| {
                    encoder
                        .model
                        .logits_from_embeddings_jet(e, &encoder.mask)
                        .map_err(candle_core::Error::from)?
                        .cross_entropy(&encoder.y)
                };
                step(method, &target, &loss, Some(&jet), &mut self.rng)
            }
            other => Err(advtrain::Error::InvalidArgument {
                name: "model",
                reason: format!("unknown model {other}"),
                fix: "mlp, embedding, cnn or minilm".into(),
            }),
        }
    }

    /// Milliseconds for `steps` steps.
    fn time(&mut self, model: &str, variant: &str, method: &str, steps: usize) -> Result<f64> {
        let started = Instant::now();
        let in_pool = self.in_pool;
        let mut run = || {
            for _ in 0..steps {
                self.run(model, variant, method)?;
            }
            Ok::<(), advtrain::Error>(())
        };
        if in_pool {
            fused::in_worker_pool(run)?;
        } else {
            run()?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e3)
    }
}

/// Answers `model variant method steps` lines with `ok <ms>` (or `error <message>`) until `quit`.
fn worker(bench: &mut Bench) -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["quit"] => break,
            ["loss", model, variant, method] => bench
                .run(model, variant, method)
                .map(|loss| format!("ok {loss}")),
            [model, variant, method, steps] => match steps.parse::<usize>() {
                Ok(steps) => bench
                    .time(model, variant, method, steps)
                    .map(|ms| format!("ok {ms}")),
                Err(_) => Ok(format!("error steps must be a count, got {steps}")),
            },
            _ => Ok(format!(
                "error expected `model variant method steps`, got `{line}`"
            )),
        };
        let answer =
            answer.unwrap_or_else(|e| format!("error {}", e.to_string().replace('\n', " ")));
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// advtrain alone: candle vs fused for every model and method, medians of interleaved rounds.
fn table(bench: &mut Bench, rounds: usize) -> Result<()> {
    let methods = if advtrain::second_order::is_enabled() {
        &[
            "plain",
            "fgm",
            "gradient_penalty",
            "hutchinson_1",
            "hutchinson_taylor",
        ][..]
    } else {
        &["plain", "fgm", "hutchinson_taylor"][..]
    };
    println!("advtrain alone, f32, medians of {rounds} interleaved rounds (ms per step)");
    println!("| model | method | candle ops | fused ops | fused / candle | fused / fused plain |");
    println!("|---|---|---|---|---|---|");
    for model in ["mlp", "embedding"] {
        let mut times = vec![[Vec::new(), Vec::new()]; methods.len()];
        // Taylor mode's jet rules are built on the fused ops: it has no candle-ops variant.
        let candle = |bench: &mut Bench, method: &str| match method {
            "hutchinson_taylor" => Ok(f64::NAN),
            _ => bench.time(model, "candle", method, 1),
        };
        for method in methods {
            candle(bench, method)?;
            bench.time(model, "fused", method, 1)?;
        }
        for _ in 0..rounds {
            for (i, method) in methods.iter().enumerate() {
                times[i][0].push(candle(bench, method)?);
                times[i][1].push(bench.time(model, "fused", method, 1)?);
            }
        }
        let medians: Vec<(f64, f64)> = times
            .into_iter()
            .map(|[c, f]| (median(c), median(f)))
            .collect();
        for (i, method) in methods.iter().enumerate() {
            let (c, f) = medians[i];
            println!(
                "| {model} | {method} | {c:.2} | {f:.2} | {:.2} | {:.2}x |",
                f / c,
                f / medians[0].1
            );
        }
    }
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first thing in main, before any thread exists. The setting a user's main makes
    // (advtrain::fused::no_idle_spinning); `ADVTRAIN_SPIN=1` leaves candle's default, to measure it.
    if std::env::var_os("ADVTRAIN_SPIN").is_none() {
        unsafe { advtrain::fused::no_idle_spinning() };
    }
    // Gradient penalty and Hutchinson fail with a clear error unless second order is on
    // (CANDLE_GRAD_DO_NOT_DETACH=1); plain and FGM also run with it off, to measure what it costs.
    let mut bench = Bench::new()?;
    if std::env::args().any(|a| a == "--worker") {
        Ok(worker(&mut bench)?)
    } else {
        Ok(table(&mut bench, 15)?)
    }
}
