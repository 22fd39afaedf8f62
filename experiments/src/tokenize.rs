//! Tokenisation with the `tokenizers` crate: a BERT WordPiece tokenizer built from a vocab file (the
//! bert-base-chinese vocab for THUCNews) or loaded from a `tokenizer.json` (MiniLM's, for English),
//! and padding of token sequences into `(ids, mask)` batches. Book: "Experiments", section "Data".

use advtrain::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

/// A BERT-style tokenizer that adds `[CLS]` / `[SEP]` and truncates to `max_len` tokens.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
    unk_id: Option<u32>,
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(
        path.display(),
        None,
        format!("cannot build a tokenizer: {e}"),
        "pass a BERT vocab.txt (one token per line) or a Hugging Face tokenizer.json",
    )
}

fn special_id(inner: &Tokenizer, path: &Path, token: &str) -> Result<u32> {
    inner
        .token_to_id(token)
        .ok_or_else(|| tokenizer_error(path, format!("the vocabulary has no {token}")))
}

impl TextTokenizer {
    /// WordPiece from a BERT `vocab.txt`, with BERT's normaliser (lower case: otherwise Latin capitals
    /// become `[UNK]` with the Chinese vocab), pre-tokeniser and `[CLS] ... [SEP]` post-processing.
    pub fn wordpiece(vocab: &Path, max_len: usize) -> Result<Self> {
        let shown = vocab.display().to_string();
        if !vocab.exists() {
            return Err(Error::data(
                shown,
                None,
                "no such file",
                "the shipped vocab is data/bert-base-chinese-vocab.txt",
            ));
        }
        let model = WordPiece::from_file(&shown)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tokenizer_error(vocab, e))?;
        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| tokenizer_error(vocab, e))?
            .with_pre_tokenizer(Some(BertPreTokenizer));
        let sep = special_id(&inner, vocab, "[SEP]")?;
        let cls = special_id(&inner, vocab, "[CLS]")?;
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        Self::finish(inner, vocab, max_len)
    }

    /// A Hugging Face `tokenizer.json` (e.g. all-MiniLM-L6-v2's); its own padding and truncation are
    /// replaced by truncation to `max_len` and padding per batch.
    pub fn from_json(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| tokenizer_error(path, e))?;
        inner.with_padding(None);
        Self::finish(inner, path, max_len)
    }

    fn finish(mut inner: Tokenizer, path: &Path, max_len: usize) -> Result<Self> {
        if max_len < 3 {
            return Err(Error::InvalidArgument {
                name: "max_len",
                reason: format!(
                    "{max_len} tokens leave no room for a token between [CLS] and [SEP]"
                ),
                fix: "pass a length of 3 or more (--max-len)".into(),
            });
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| tokenizer_error(path, e))?;
        // BERT's names, or the RoBERTa family's (RoBERTa, XLM-R).
        let pad_id = match inner.token_to_id("<pad>") {
            Some(id) if inner.token_to_id("[PAD]").is_none() => id,
            _ => inner.token_to_id("[PAD]").ok_or_else(|| {
                tokenizer_error(path, "the vocabulary has neither [PAD] nor <pad>")
            })?,
        };
        let unk_id = inner
            .token_to_id("[UNK]")
            .or_else(|| inner.token_to_id("<unk>"));
        Ok(Self {
            inner,
            max_len,
            pad_id,
            unk_id,
        })
    }

    /// The vocabulary size (the embedding matrix's row count).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The padding id: `[PAD]`'s, or `<pad>`'s for the RoBERTa family.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of each text, `[CLS]` and `[SEP]` included, at most `max_len` long.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings =
            self.inner
                .encode_batch(inputs, true)
                .map_err(|e| Error::InvalidArgument {
                    name: "texts",
                    reason: format!("the tokenizer failed: {e}"),
                    fix: "check the texts are valid UTF-8 sentences".into(),
                })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The ids of `texts` at this tokenizer's `max_len`, from `encoded`: their ids under the same
    /// tokenizer truncated to a larger length. A sequence within this `max_len` was not truncated
    /// there and is kept as it is; only the longer ones are encoded again. So a data set whose
    /// maximum length is read off a first encoding is not encoded twice.
    pub fn encode_from_longer(
        &self,
        texts: &[String],
        mut encoded: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<u32>>> {
        if encoded.len() != texts.len() {
            return Err(Error::InvalidArgument {
                name: "encoded",
                reason: format!("{} sequences for {} texts", encoded.len(), texts.len()),
                fix: "pass the encoding of these texts".into(),
            });
        }
        let longer: Vec<usize> = (0..texts.len())
            .filter(|&i| encoded[i].len() > self.max_len)
            .collect();
        let again: Vec<&str> = longer.iter().map(|&i| texts[i].as_str()).collect();
        for (i, ids) in longer.into_iter().zip(self.encode(&again)?) {
            encoded[i] = ids;
        }
        Ok(encoded)
    }

    /// The fraction of tokens that are `[UNK]` (0 when the vocab has no `[UNK]`).
    pub fn unknown_fraction(&self, encoded: &[Vec<u32>]) -> f64 {
        let Some(unk) = self.unk_id else { return 0.0 };
        let total: usize = encoded.iter().map(Vec::len).sum();
        let unknown = encoded.iter().flatten().filter(|&&id| id == unk).count();
        unknown as f64 / total.max(1) as f64
    }
}

/// Pads sequences to the longest: `(ids (b, n) u32, mask (b, n) dtype)` with 1 on real tokens.
pub fn pad_batch(
    sequences: &[&[u32]],
    pad_id: u32,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = sequences.len();
    let n = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
    if b == 0 || n == 0 {
        return Err(Error::EmptyBatch {
            name: "sequences",
            detail: format!("{b} sequences of at most {n} tokens"),
        });
    }
    let mut ids = vec![pad_id; b * n];
    let mut mask = vec![0f32; b * n];
    for (row, s) in sequences.iter().enumerate() {
        ids[row * n..row * n + s.len()].copy_from_slice(s);
        mask[row * n..row * n + s.len()].fill(1.0);
    }
    Ok((
        Tensor::from_vec(ids, (b, n), device)?,
        Tensor::from_vec(mask, (b, n), device)?.to_dtype(dtype)?,
    ))
}
