//! Trainable models on the fused, differentiable ops: a BERT-family text classifier that loads
//! Hugging Face checkpoints, and the small image CNN of the experiments.
//!
//! candle-nn's `LayerNorm` (on contiguous input) and `softmax_last_dim` record no backward pass, so a
//! transformer built on them fine-tunes only the layers above its top layer norm and gives an
//! embedding perturbation no gradient, silently. These models use [`crate::fused`] throughout (linear,
//! GELU, layer norm, softmax; on a GPU the composite forms of [`crate::ops`]): every op differentiates
//! to second order, so FGM, gradient penalty and Hutchinson run through the whole model, at the speed
//! the benchmarks measure. `tests/suite/models.rs` checks first and second derivatives against finite
//! differences in f64, the Hugging Face round trip and the loader's errors.
//!
//! | type | what |
//! |---|---|
//! | [`BertClassifier`], [`BertConfig`] | BERT / RoBERTa / MiniLM encoder + pooled classification head; `config.json` + `model.safetensors` |
//! | [`Cnn`] | two strided 5x5 convolutions and a dense classifier for 28 x 28 images |
//! | [`Dense`], [`Conv`], [`Mode`] | layers whose weight may be spectrally normalised; training or evaluation mode |
//!
//! The perturbation targets: [`BertClassifier::embed`] gives the embedding output (for
//! [`crate::Target::embedding_output`]), [`BertClassifier::word_embeddings`] the matrix (for
//! [`crate::Target::embedding_matrix`] with [`BertClassifier::embed_with`], or
//! [`crate::Target::in_place`]); [`Cnn::logits`] takes the pixels (for [`crate::Target::input`]).
//! Book: "Models".

mod bert;
mod cnn;
mod layers;

pub use bert::{Activation, BertClassifier, BertConfig, Head, Loaded, Pooling};
pub use cnn::Cnn;
pub use layers::{Conv, Dense, Mode};
