//! Perturbation targets: "a loss evaluated at a perturbed point".
//!
//! Every method in this crate (noise, Hutchinson, FGM, gradient penalty, ...) is written against a
//! [`Target`] and a loss closure `Fn(&Tensor) -> candle_core::Result<Tensor>` that maps the (perturbed)
//! point to a scalar loss. Three kinds of point, one code path:
//!
//! * [`Target::input`]: the model's input features `x`, shape `(b, ...)`; norms are per example.
//! * [`Target::embedding_output`]: the embedding lookup's output, `(b, n, d)`, with an optional padding
//!   mask `(b, n)`: padded positions are never perturbed and norms are per sentence. The closure is the
//!   rest of the model; the embedding matrix keeps its gradient through the point.
//! * [`Target::embedding_matrix`] (or any [`Target::weight`]): the cheap shared form, one perturbation
//!   of the matrix for every occurrence of a token. The closure does the lookup itself.
//! * [`Target::in_place`]: a weight the model reads itself (a `Var` of a model the user cannot edit,
//!   such as a pretrained encoder's embedding matrix): each perturbed pass sets the variable to
//!   its current value plus delta, runs the user's unchanged model, takes the backward pass and
//!   restores the variable bit for bit, as the seeds' one-line FGM does. The closure ignores the tensor it is given.
//! * [`Target::embedding_rows`]: the same step as the embedding matrix's without a copy of the matrix
//!   per perturbed pass: the point is the rows the batch looks up (each once), and the closure looks
//!   the ids up in them with [`RowLookup::embed`]. The matrix gradient is zero outside those rows, so
//!   every norm, direction and penalty is the matrix target's.
//!
//! The gradient with respect to the point comes from a zero-valued `Var` added to it, from a
//! variable copy of the point when it is data without a mask, or from the weight's own gradient when
//! the point is a `Var`. Book chapter: "Min-max".

use crate::step::CleanPass;
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::fmt;

/// Which kind of point a [`Target`] perturbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// Input features, one row per example.
    Input,
    /// Embedding output `(b, n, d)`, one sentence per example.
    EmbeddingOutput,
    /// A weight such as the embedding matrix, shared by the whole batch.
    Weight,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Input => "input",
            TargetKind::EmbeddingOutput => "embedding output",
            TargetKind::Weight => "weight (embedding matrix)",
        })
    }
}

/// A point to perturb, with its padding mask and how its entries group into examples.
#[derive(Clone, Debug)]
pub struct Target {
    point: Tensor,
    /// Broadcastable to the point: 1 where perturbations apply, 0 at padding.
    mask: Option<Tensor>,
    kind: TargetKind,
    /// Set when the point is itself a variable: its gradient is the point's gradient.
    var: Option<Var>,
    /// Whether perturbed passes write `point + delta` into `var` (the point is then a copy).
    in_place: bool,
}

/// Which gradients a pass of [`Target`] must produce.
#[derive(Clone, Copy)]
enum Gradients {
    /// Every variable's.
    Every,
    /// The probe's; the fused ops skip the weights' ([`crate::fused::backward_for`]).
    PointOnly,
    /// Every variable's, by a first-order pass ([`crate::fused::backward_first_order`]): for a
    /// pass whose gradients are reduced to values at once ([`CleanPass`]).
    EveryFirstOrder,
}

/// Where each token of a batch sits among the rows of a [`Target::embedding_rows`] target.
#[derive(Clone, Debug)]
pub struct RowLookup {
    /// For each token, its row in the target's point (the ids' shape).
    positions: Tensor,
}

impl RowLookup {
    /// The embedding output `(ids..., d)` from the (perturbed) rows `(rows, d)`.
    pub fn embed(&self, rows: &Tensor) -> candle_core::Result<Tensor> {
        crate::fused::embedding(rows, &self.positions)
    }
}

/// The loss at the unperturbed point and its gradient with respect to the point.
pub struct PointGradient {
    /// The loss at the point (with its graph).
    pub loss: Tensor,
    /// Gradients of the loss for every variable (the point's own entry removed).
    pub grads: GradStore,
    /// dLoss/dPoint; it keeps its graph when second order is on.
    pub gradient: Tensor,
    /// The tensor the gradient was taken against (see `Target::probe_point`).
    pub(crate) probe: Tensor,
}

fn check_float(name: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(()),
        other => Err(Error::InvalidArgument {
            name,
            reason: format!("perturbations need a floating-point tensor, got {other:?}"),
            fix: "convert it with `.to_dtype(DType::F32)` (or F64)".into(),
        }),
    }
}

fn check_batch(name: &'static str, t: &Tensor) -> Result<()> {
    if t.rank() == 0 {
        return Err(Error::ShapeMismatch {
            name,
            expected: "a batch (b, ...) with the examples along dimension 0".into(),
            got: vec![],
        });
    }
    if t.dim(0)? == 0 || t.elem_count() == 0 {
        return Err(Error::EmptyBatch {
            name,
            detail: format!("has shape {:?}", t.dims()),
        });
    }
    Ok(())
}

impl Target {
    /// The model's input features, `(b, ...)`, perturbed per example.
    pub fn input(x: &Tensor) -> Result<Self> {
        check_float("x", x)?;
        check_batch("x", x)?;
        Ok(Self {
            point: x.clone(),
            mask: None,
            kind: TargetKind::Input,
            var: None,
            in_place: false,
        })
    }

    /// The embedding output `(b, n, d)`; `mask` is `(b, n)`, 1 for real tokens and 0 for padding.
    pub fn embedding_output(embeddings: &Tensor, mask: Option<&Tensor>) -> Result<Self> {
        check_float("embeddings", embeddings)?;
        check_batch("embeddings", embeddings)?;
        if embeddings.rank() != 3 {
            return Err(Error::ShapeMismatch {
                name: "embeddings",
                expected: "(batch, tokens, hidden)".into(),
                got: embeddings.dims().to_vec(),
            });
        }
        let mask = match mask {
            None => None,
            Some(m) => {
                let (b, n, _) = embeddings.dims3()?;
                if m.dims() != [b, n] {
                    return Err(Error::ShapeMismatch {
                        name: "mask",
                        expected: format!("({b}, {n}): (batch, tokens) of the embeddings"),
                        got: m.dims().to_vec(),
                    });
                }
                // The values are checked where they can be read in place (the CPU); on a GPU the
                // check would copy the mask to the host on every batch (call `check_mask` there).
                if m.device().is_cpu() {
                    check_mask(m)?;
                }
                Some(m.to_dtype(embeddings.dtype())?.unsqueeze(2)?)
            }
        };
        Ok(Self {
            point: embeddings.clone(),
            mask,
            kind: TargetKind::EmbeddingOutput,
            var: None,
            in_place: false,
        })
    }

    /// The embedding matrix `(vocab, d)`: one perturbation shared by every occurrence of a token.
    pub fn embedding_matrix(matrix: &Var) -> Result<Self> {
        Self::weight(matrix)
    }

    /// Any weight (for weight noise or a shared perturbation); norms are over the whole tensor.
    pub fn weight(weight: &Var) -> Result<Self> {
        check_float("weight", weight.as_tensor())?;
        if weight.elem_count() == 0 {
            return Err(Error::EmptyBatch {
                name: "weight",
                detail: "has no entries".into(),
            });
        }
        Ok(Self {
            point: weight.as_tensor().clone(),
            mask: None,
            kind: TargetKind::Weight,
            var: Some(weight.clone()),
            in_place: false,
        })
    }

    /// A weight that the model reads itself, perturbed in place: every perturbed pass copies the
    /// weight's current value `w`, sets `weight` to `w + delta`, runs the loss closure (which ignores
    /// its argument and runs the user's model as it is), takes its backward pass and restores `w` bit
    /// for bit, on error too. The target can be built once: it always perturbs the weight's current
    /// value, so the optimiser's updates between steps are kept. FGM, PGD, FreeAT, FreeLB, Gaussian
    /// noise, plain training and the exact gradient penalty and Hutchinson steps work on it. Methods
    /// that put the model at two points into one graph (SMART, VAT, YOPO, target shift, the
    /// finite-difference forms) and multiplicative noise (whose perturbation must stay attached to
    /// the weight) return an error naming this target.
    pub fn in_place(weight: &Var) -> Result<Self> {
        let mut target = Self::weight(weight)?;
        target.in_place = true;
        Ok(target)
    }

    /// Whether perturbed passes write into the variable ([`Target::in_place`]).
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }

    /// The rows of `matrix` `(vocab, d)` that the token `ids` (any shape, integer) look up, each row
    /// once, as a shared perturbation target; and the [`RowLookup`] that turns (perturbed) rows into
    /// the embedding output `(ids..., d)`. Deterministic steps (FGM, gradient penalty, PGD from zero)
    /// equal those on [`Target::embedding_matrix`] without forming `matrix + delta`, a copy of the
    /// whole matrix, for every perturbed pass; random starts and noise are drawn on the looked-up rows
    /// only. The matrix keeps its gradient through the lookup.
    pub fn embedding_rows(matrix: &Var, ids: &Tensor) -> Result<(Self, RowLookup)> {
        check_float("matrix", matrix.as_tensor())?;
        let (vocab, _) = matrix.dims2().map_err(|_| Error::ShapeMismatch {
            name: "matrix",
            expected: "(vocab, d)".into(),
            got: matrix.dims().to_vec(),
        })?;
        crate::fused::check_ids(ids)?;
        if ids.elem_count() == 0 {
            return Err(Error::EmptyBatch {
                name: "ids",
                detail: format!("has shape {:?}", ids.dims()),
            });
        }
        let flat: Vec<i64> = ids.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
        if let Some(bad) = flat.iter().find(|&&id| id < 0 || id as usize >= vocab) {
            return Err(Error::InvalidArgument {
                name: "ids",
                reason: format!("token id {bad} is outside the matrix's {vocab} rows"),
                fix: "pass ids in 0..vocab, from the tokenizer that goes with this matrix".into(),
            });
        }
        let mut unique: Vec<u32> = flat.iter().map(|&id| id as u32).collect();
        unique.sort_unstable();
        unique.dedup();
        let positions: Vec<u32> = flat
            .iter()
            .map(|&id| unique.binary_search(&(id as u32)).expect("id is in unique") as u32)
            .collect();
        let device = matrix.device();
        let rows = unique.len();
        let unique = Tensor::from_vec(unique, rows, device)?;
        let point = matrix.as_tensor().index_select(&unique, 0)?;
        let lookup = RowLookup {
            positions: Tensor::from_vec(positions, ids.shape(), device)?,
        };
        let target = Self {
            point,
            mask: None,
            kind: TargetKind::Weight,
            var: None,
            in_place: false,
        };
        Ok((target, lookup))
    }

    /// The unperturbed point.
    pub fn point(&self) -> &Tensor {
        &self.point
    }

    /// What kind of point this is.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// The padding mask, broadcastable to the point, if any.
    pub fn mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }

    /// Whether the entries group into examples (dimension 0) for per-example norms.
    pub fn has_examples(&self) -> bool {
        self.kind != TargetKind::Weight
    }

    /// Zeroes `t` at padded positions (identity without a mask).
    pub fn apply_mask(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match &self.mask {
            Some(m) => t.broadcast_mul(m)?,
            None => t.clone(),
        })
    }

    /// Checks that `delta` can perturb this point: same shape and dtype.
    pub fn check_delta(&self, delta: &Tensor) -> Result<()> {
        if delta.shape() != self.point.shape() {
            return Err(Error::ShapeMismatch {
                name: "delta",
                expected: format!("{:?} (the {}'s shape)", self.point.dims(), self.kind),
                got: delta.dims().to_vec(),
            });
        }
        if delta.dtype() != self.point.dtype() {
            return Err(Error::DTypeMismatch {
                name: "delta",
                expected: self.point.dtype(),
                got: delta.dtype(),
            });
        }
        Ok(())
    }

    /// The perturbed point `point + mask * delta` (differentiable in both). An in-place target has no
    /// such tensor for the model to read: an error names the methods that work on it.
    pub fn perturb(&self, delta: &Tensor) -> Result<Tensor> {
        self.refuse_in_place()?;
        self.check_delta(delta)?;
        Ok((&self.point + self.apply_mask(delta)?)?)
    }

    /// An error unless the target's entries group into examples: `method` works per example, and a
    /// weight or embedding-matrix target is shared by the whole batch.
    pub(crate) fn require_examples(&self, method: &str) -> Result<()> {
        if !self.has_examples() {
            return Err(Error::InvalidArgument {
                name: "target",
                reason: format!(
                    "{method} works per example, and a {} is shared by the whole batch",
                    self.kind
                ),
                fix: "use Target::input or Target::embedding_output".into(),
            });
        }
        Ok(())
    }

    /// The error for a computation that an in-place target cannot serve.
    pub(crate) fn refuse_in_place(&self) -> Result<()> {
        if self.in_place {
            return Err(Error::InvalidArgument {
                name: "target",
                reason: "this computation evaluates the model at a perturbed point it builds as a \
                         tensor, or at two points in one graph, and an in-place target holds one value \
                         at a time in the model's own variable"
                    .into(),
                fix: "with Target::in_place use plain training, noise, FGM, PGD, FreeAT, FreeLB or \
                      the exact gradient penalty / Hutchinson step; otherwise pass the matrix to the \
                      model and use Target::embedding_matrix"
                    .into(),
            });
        }
        Ok(())
    }

    /// The loss at `point + mask * delta`; errors when the closure does not return a scalar.
    pub fn loss_at<F>(&self, loss_fn: &F, delta: &Tensor) -> Result<Tensor>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        scalar_loss(loss_fn(&self.perturb(delta)?)?)
    }

    /// One forward and one backward pass at `point + mask * delta` (at the point for `None`): the loss
    /// and every variable's gradient, both detached. On an in-place target the variable holds
    /// `point + delta` for the pass and is restored after the backward pass.
    pub(crate) fn gradients_at<F>(
        &self,
        loss_fn: &F,
        delta: Option<&Tensor>,
    ) -> Result<(Tensor, GradStore)>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let (loss, mut grads) = match (delta, self.in_place) {
            (None, _) => {
                let loss = self.loss(loss_fn)?;
                let grads = crate::fused::backward_first_order(&loss)?;
                (loss, grads)
            }
            (Some(delta), false) => {
                let loss = self.loss_at(loss_fn, delta)?;
                let grads = crate::fused::backward_first_order(&loss)?;
                (loss, grads)
            }
            (Some(delta), true) => self.with_in_place(delta, |var| {
                let loss = scalar_loss(loss_fn(var.as_tensor())?)?;
                let grads = crate::fused::backward_first_order(&loss)?;
                Ok((loss, grads))
            })?,
        };
        crate::grads::detach_all(&mut grads);
        Ok((loss.detach(), grads))
    }

    /// Runs `pass` with the in-place variable set to `w + mask * delta`, `w` its value now, then
    /// restores `w`.
    fn with_in_place<T>(&self, delta: &Tensor, pass: impl FnOnce(&Var) -> Result<T>) -> Result<T> {
        self.check_delta(delta)?;
        let var = self
            .var
            .as_ref()
            .expect("an in-place target holds its variable");
        // The weight's value now: the optimiser may have moved it since the target was built.
        let current = var.as_tensor().detach().copy()?;
        let perturbed = (&current + self.apply_mask(&delta.detach())?)?;
        let _restore = Restore {
            var,
            value: &current,
        };
        var.set(&perturbed)?;
        pass(var)
    }

    /// The loss at the unperturbed point.
    pub fn loss<F>(&self, loss_fn: &F) -> Result<Tensor>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        scalar_loss(loss_fn(&self.point)?)
    }

    /// The point made differentiable: `(point + mask * zero, zero)` with `zero` a zero-valued `Var`,
    /// `(var, var)` when the point is itself a variable, or with `var` a variable copy of the point
    /// when it is data (no graph) without a mask. The gradient of anything computed from the first
    /// tensor with respect to the point is the gradient with respect to the second.
    ///
    /// In the last two cases the model meets the probe itself, so a pass that does not want the
    /// point's gradient can leave it out ([`Target::objective_gradients`], the fused linear ops).
    pub(crate) fn probe_point(&self) -> Result<(Tensor, Tensor)> {
        Ok(match &self.var {
            Some(var) => (var.as_tensor().clone(), var.as_tensor().clone()),
            None if self.mask.is_none() && !self.point.track_op() => {
                let var = Var::from_tensor(&self.point)?;
                (var.as_tensor().clone(), var.as_tensor().clone())
            }
            None => {
                let zero = Var::zeros(self.point.shape(), self.point.dtype(), self.point.device())?;
                (self.perturb(zero.as_tensor())?, zero.as_tensor().clone())
            }
        })
    }

    /// One forward and one backward pass: the loss, every variable's gradient, and dLoss/dPoint.
    /// Errors with [`Error::NoGradient`] when the loss does not depend on the point.
    pub fn loss_and_gradient<F>(&self, loss_fn: &F) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        self.gradient_with(loss_fn, Gradients::Every)
    }

    /// [`Target::loss_and_gradient`] reduced to values ([`CleanPass`]), by a first-order backward
    /// pass: the fused ops return their gradients detached, so the pass's intermediate gradients
    /// are freed as it goes instead of being kept, with their graph, until it ends. For the
    /// passes of FGM, PGD and the rest whose gradients nobody differentiates.
    pub(crate) fn clean_pass<F>(&self, loss_fn: &F) -> Result<CleanPass>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        Ok(CleanPass::from(
            self.gradient_with(loss_fn, Gradients::EveryFirstOrder)?,
        ))
    }

    /// [`Target::clean_pass`] at `point + mask * delta`.
    pub(crate) fn clean_pass_at<F>(&self, loss_fn: &F, delta: &Tensor) -> Result<CleanPass>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        Ok(CleanPass::from(self.gradient_at(
            loss_fn,
            delta,
            Gradients::EveryFirstOrder,
        )?))
    }

    /// One forward and one backward pass for the loss and dLoss/dPoint only: the fused ops
    /// ([`crate::fused::linear`]) skip the weights' gradients, so `grads` may lack them (it holds what
    /// candle's own ops computed). For methods that differentiate the gradient and then take every
    /// weight's gradient of an objective in one more pass ([`Target::objective_gradients`]):
    /// gradient penalty and Hutchinson.
    pub(crate) fn point_gradient<F>(&self, loss_fn: &F) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        self.gradient_with(loss_fn, Gradients::PointOnly)
    }

    /// The pass at the point for [`Target::loss_and_gradient`], [`Target::clean_pass`] and
    /// [`Target::point_gradient`].
    fn gradient_with<F>(&self, loss_fn: &F, wanted: Gradients) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let (point, probe) = self.probe_point()?;
        let keep = self.probe_is_weight();
        self.gradient_through(loss_fn, &point, probe, keep, wanted)
    }

    /// Every variable's gradient of `objective`, an objective built from `point_gradient`'s loss and
    /// gradient, in one backward pass. The point's own gradient is left out (the fused ops skip it
    /// where the model meets the probe directly) unless the point is a weight, whose gradient is
    /// its update.
    pub(crate) fn objective_gradients(
        &self,
        objective: &Tensor,
        point_gradient: &PointGradient,
    ) -> Result<GradStore> {
        if self.probe_is_weight() {
            return crate::fused::backward_first_order(objective);
        }
        let probe = &point_gradient.probe;
        // The last pass: its gradients go to the optimiser, not into another derivative.
        let _first_order = crate::fused::first_order_pass();
        let mut grads = crate::fused::backward_except(objective, &[probe])?;
        grads.remove(probe);
        Ok(grads)
    }

    /// One forward and one backward pass at `point + mask * delta`: the loss, every variable's gradient,
    /// and the gradient with respect to `delta` (zero at padding). FreeAT and FreeLB take their
    /// ascent steps here, because they use the weights' gradients too.
    pub fn loss_and_gradient_at<F>(&self, loss_fn: &F, delta: &Tensor) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        self.gradient_at(loss_fn, delta, Gradients::Every)
    }

    /// The pass at `point + mask * delta` for [`Target::loss_and_gradient_at`],
    /// [`Target::clean_pass_at`] and [`Target::point_gradient_at`].
    fn gradient_at<F>(
        &self,
        loss_fn: &F,
        delta: &Tensor,
        wanted: Gradients,
    ) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        if self.in_place {
            // The variable is the probe: its gradient at `point + delta` is the gradient with respect
            // to delta, and also the weight's own update.
            return self.with_in_place(delta, |var| {
                let probe = var.as_tensor().clone();
                self.gradient_through(loss_fn, &probe, probe.clone(), true, wanted)
            });
        }
        let (point, probe) = self.perturbed_probe(delta)?;
        self.gradient_through(loss_fn, &point, probe, false, wanted)
    }

    /// [`Target::loss_and_gradient_at`] for a pass that needs the gradient with respect to `delta`
    /// only (the ascent steps of PGD, SMART, VAT and YOPO): the fused ops skip the weights'
    /// gradients, so `grads` may lack them.
    pub(crate) fn point_gradient_at<F>(&self, loss_fn: &F, delta: &Tensor) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        self.gradient_at(loss_fn, delta, Gradients::PointOnly)
    }

    /// Whether the probe is the weight itself, whose gradient is also its update and so stays in
    /// the gradient store.
    fn probe_is_weight(&self) -> bool {
        self.var.is_some()
    }

    /// `(point + mask * var, var)` with `var` a variable holding `delta`'s values.
    fn perturbed_probe(&self, delta: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_delta(delta)?;
        let var = Var::from_tensor(&delta.detach())?;
        Ok((self.perturb(var.as_tensor())?, var.as_tensor().clone()))
    }

    /// The loss at `point` (built from `probe`), its backward pass (for every variable, or for the
    /// probe alone as far as the fused ops can skip the rest), and the gradient at `probe`, which is
    /// removed from the store unless `keep_probe`.
    fn gradient_through<F>(
        &self,
        loss_fn: &F,
        point: &Tensor,
        probe: Tensor,
        keep_probe: bool,
        wanted: Gradients,
    ) -> Result<PointGradient>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let loss = scalar_loss(loss_fn(point)?)?;
        let mut grads = match wanted {
            Gradients::Every => loss.backward()?,
            Gradients::PointOnly => crate::fused::backward_for(&loss, &[&probe])?,
            Gradients::EveryFirstOrder => crate::fused::backward_first_order(&loss)?,
        };
        let gradient = if keep_probe {
            grads.get(&probe).cloned()
        } else {
            grads.remove(&probe)
        }
        .ok_or_else(|| Error::NoGradient {
            target: self.kind.to_string(),
        })?;
        Ok(PointGradient {
            loss,
            grads,
            gradient,
            probe,
        })
    }

    /// Checks a gradient with respect to this point: finite, and non-zero unless `allow_zero`. It reads
    /// one scalar on the host.
    pub(crate) fn check_gradient_value(&self, gradient: &Tensor, allow_zero: bool) -> Result<()> {
        let size = gradient
            .to_dtype(DType::F64)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !size.is_finite() {
            return Err(Error::NonFinite {
                what: format!("the gradient with respect to the {}", self.kind),
            });
        }
        if size == 0.0 && !allow_zero {
            return Err(Error::ZeroGradient {
                target: self.kind.to_string(),
            });
        }
        Ok(())
    }

    /// Set-up check: the loss reaches this point through differentiable ops and its gradient is finite
    /// and non-zero. Run it once on a real batch before training; a cut path fails loudly here.
    pub fn check_gradient<F>(&self, loss_fn: &F) -> Result<()>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let point_gradient = self.loss_and_gradient(loss_fn)?;
        self.check_gradient_value(&point_gradient.gradient, false)
    }

    /// Sum of `values` over each example's entries, shaped to broadcast against the point:
    /// `(b, 1, ..., 1)`. Errors for weight targets, which have no examples.
    pub fn per_example_sum(&self, values: &Tensor) -> Result<Tensor> {
        if !self.has_examples() {
            return Err(Error::InvalidArgument {
                name: "scope",
                reason: format!(
                    "a {} is shared by the whole batch and has no examples",
                    self.kind
                ),
                fix: "use Scope::PerBatch for weight and embedding-matrix targets".into(),
            });
        }
        if values.rank() < 2 {
            return Err(Error::ShapeMismatch {
                name: "point",
                expected: "(batch, features...) for per-example norms".into(),
                got: values.dims().to_vec(),
            });
        }
        let b = values.dim(0)?;
        let mut shape = vec![1usize; values.rank()];
        shape[0] = b;
        Ok(values.flatten_from(1)?.sum_keepdim(1)?.reshape(shape)?)
    }
}

/// Checks a padding mask `(b, n)`: only 0 and 1, and a real token in every row (an example without
/// one has no norm and no mean). It reads the mask on
/// the host; [`Target::embedding_output`] runs it on CPU tensors, and on other devices it is yours to
/// call (once, or on a sample of batches).
pub fn check_mask(mask: &Tensor) -> Result<()> {
    let values: Vec<f64> = mask.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    if let Some(bad) = values.iter().find(|v| **v != 0.0 && **v != 1.0) {
        return Err(Error::InvalidArgument {
            name: "mask",
            reason: format!("a padding mask holds only 0 and 1, found {bad}"),
            fix: "pass 1 for real tokens and 0 for padding".into(),
        });
    }
    if values.iter().all(|v| *v == 0.0) {
        return Err(Error::EmptyBatch {
            name: "mask",
            detail: "masks every position".into(),
        });
    }
    // A row without a real token has no norm and no mean (0 / 0 in per-example steps and pooling).
    if mask.rank() >= 2
        && let Some(row) = values
            .chunks((mask.elem_count() / mask.dim(0)?).max(1))
            .position(|row| row.iter().all(|v| *v == 0.0))
    {
        return Err(Error::InvalidArgument {
            name: "mask",
            reason: format!("row {row} masks every position: an example without a real token"),
            fix: "drop empty examples from the batch, or give each at least one real token".into(),
        });
    }
    Ok(())
}

/// Restores an in-place target's variable when dropped, on error too.
struct Restore<'a> {
    var: &'a Var,
    value: &'a Tensor,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        // The value has the variable's shape and dtype (it was copied from it), so `set` cannot fail
        // on a mismatch; a device error here has nowhere to go but the next call.
        let _ = self.var.set(self.value);
    }
}

/// Accepts a one-element loss (any rank) and returns it as a rank-0 tensor.
fn scalar_loss(loss: Tensor) -> Result<Tensor> {
    if loss.elem_count() != 1 {
        return Err(Error::ShapeMismatch {
            name: "loss_fn",
            expected: "a scalar loss (reduce the batch with .mean_all() or a candle_nn::loss)"
                .into(),
            got: loss.dims().to_vec(),
        });
    }
    Ok(if loss.rank() == 0 {
        loss
    } else {
        loss.reshape(())?
    })
}
