//! Divergences between model outputs, defined once: the Kullback-Leibler divergence
//! `KL(P || Q) = sum_i p_i (log p_i - log q_i)` and what is built from it.
//!
//! * [`kl_from_logits`]: `KL(softmax(a) || softmax(b))`, VAT's regulariser (with `a` detached).
//! * [`symmetric_kl_from_logits`]: `KL(P || Q) + KL(Q || P)`, SMART's `l_s` for classification.
//! * [`kl_from_probabilities`]: the same KL on probability outputs, target shift's divergence.
//! * [`cross_entropy_uniform`]: `H(u, softmax(z))`, the label-smoothing penalty's term.
//!
//! Each takes `(batch, k)` tensors, sums over the `k` outputs and averages over the batch. Book
//! chapters: "Target shift", "PGD, FreeAT, YOPO, FreeLB, SMART, VAT".

use crate::{Error, Result};
use candle_core::{D, Tensor};

fn check_pair(name: &'static str, reference: &Tensor, other: &Tensor) -> Result<()> {
    if reference.shape() != other.shape() || other.rank() != 2 {
        return Err(Error::ShapeMismatch {
            name,
            expected: format!(
                "(batch, k) of one shape with the reference {:?}",
                reference.dims()
            ),
            got: other.dims().to_vec(),
        });
    }
    Ok(())
}

/// `sum_i exp(log_p_i) (log_p_i - log_q_i)` per row, from log-probabilities: the one KL.
pub(crate) fn kl_rows(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    Ok((log_p.exp()? * (log_p - log_q)?)?.sum(D::Minus1)?)
}

/// `KL(softmax(reference) || softmax(logits))`, averaged over the batch; the reference is taken as
/// given (detach it for VAT, whose `p(y|x)` is a constant).
pub fn kl_from_logits(reference: &Tensor, logits: &Tensor) -> Result<Tensor> {
    check_pair("logits", reference, logits)?;
    let log_p = candle_nn::ops::log_softmax(reference, D::Minus1)?;
    let log_q = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(kl_rows(&log_p, &log_q)?.mean_all()?)
}

/// `KL(P || Q) + KL(Q || P)` of the softmax distributions of `a` and `b`, averaged over the batch;
/// both sides keep their graphs (SMART differentiates both).
pub fn symmetric_kl_from_logits(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair("outputs", a, b)?;
    let log_p = candle_nn::ops::log_softmax(a, D::Minus1)?;
    let log_q = candle_nn::ops::log_softmax(b, D::Minus1)?;
    Ok((kl_rows(&log_p, &log_q)? + kl_rows(&log_q, &log_p)?)?.mean_all()?)
}

/// `KL(reference || perturbed)` per example for probability outputs; `reference` may be one row
/// `(1, k)` broadcast over the batch.
pub fn kl_from_probabilities(perturbed: &Tensor, reference: &Tensor) -> Result<Tensor> {
    let log_ratio = reference.log()?.broadcast_sub(&perturbed.log()?)?;
    Ok(log_ratio.broadcast_mul(reference)?.sum(D::Minus1)?)
}

/// `H(u, softmax(logits)) = -(1/k) sum_i log softmax(logits)_i`, averaged over the batch.
pub fn cross_entropy_uniform(logits: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 {
        return Err(Error::ShapeMismatch {
            name: "outputs",
            expected: "logits of shape (batch, classes)".into(),
            got: logits.dims().to_vec(),
        });
    }
    let log_q = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(log_q.mean(D::Minus1)?.neg()?.mean_all()?)
}
