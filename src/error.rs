//! Errors: every way user input can be wrong has its own variant, naming the argument and the fix.
//!
//! Functions of this crate return [`Result`]. An [`Error`] converts into `candle_core::Error`, so a
//! training loop written against `candle_core::Result` can use `?` on anything advtrain returns.

use candle_core::DType;

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, with the argument at fault and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A numeric or structural argument is out of its domain (eps < 0, NaN, K = 0, ...).
    #[error("invalid argument `{name}`: {reason}; fix: {fix}")]
    InvalidArgument {
        name: &'static str,
        reason: String,
        fix: String,
    },
    /// A tensor argument has the wrong shape.
    #[error("shape mismatch for `{name}`: expected {expected}, got {got:?}")]
    ShapeMismatch {
        name: &'static str,
        expected: String,
        got: Vec<usize>,
    },
    /// A tensor argument has the wrong dtype.
    #[error(
        "dtype mismatch for `{name}`: expected {expected:?}, got {got:?}; fix: convert it with `.to_dtype(DType::{expected:?})`"
    )]
    DTypeMismatch {
        name: &'static str,
        expected: DType,
        got: DType,
    },
    /// A batch with no examples (or a padding mask that masks everything).
    #[error("empty batch: `{name}` {detail}; fix: skip empty batches before calling advtrain")]
    EmptyBatch { name: &'static str, detail: String },
    /// A method needs second-order gradients and candle was not told to keep gradient graphs.
    #[error(
        "{what} needs second-order gradients, but they are off on this thread: candle detaches every \
         gradient unless the environment variable CANDLE_GRAD_DO_NOT_DETACH=1 is set before the thread's \
         first backward pass, and would return a silently wrong gradient. Fix: start the process with \
         CANDLE_GRAD_DO_NOT_DETACH=1 (for cargo, add `[env] CANDLE_GRAD_DO_NOT_DETACH = {{ value = \"1\", \
         force = true }}` to .cargo/config.toml), or use the finite-difference form of {what}, which needs \
         first-order gradients only"
    )]
    SecondOrderDisabled { what: &'static str },
    /// The loss does not depend on the perturbation: the gradient path was cut.
    #[error(
        "the loss has no gradient with respect to the {target}: the path from the perturbed point to the \
         loss is cut. In candle 0.11 these ops pass no gradient: candle_nn::LayerNorm on contiguous input, \
         candle_nn::ops::layer_norm, candle_nn::RmsNorm, candle_nn::ops::rms_norm, \
         candle_nn::ops::softmax_last_dim, any `.detach()` and custom ops without a backward. Fix: use \
         advtrain::ops::{{layer_norm, LayerNorm, softmax_last_dim}} instead, and make the loss closure \
         compute the loss from the tensor it is given"
    )]
    NoGradient { target: String },
    /// The gradient with respect to the perturbation is identically zero.
    #[error(
        "the gradient of the loss with respect to the {target} is identically zero, so no perturbation \
         direction exists; a cut gradient path (see the ops listed under NoGradient) or a fully saturated \
         loss does this. Fix: check the model with advtrain::target::Target::check_gradient, or, if a zero \
         gradient is expected late in training, build the batch with \
         `.with_check(advtrain::GradientCheck::Finite)` to take a zero perturbation instead"
    )]
    ZeroGradient { target: String },
    /// NaN or infinity where a finite number is required.
    #[error(
        "{what} is not finite (NaN or infinity); fix: check the inputs and the learning rate, or lower eps"
    )]
    NonFinite { what: String },
    /// A data file is missing, unreadable or malformed (`line` is 1-based, where one is known).
    #[error("{path}{}: {reason}; fix: {fix}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        path: String,
        line: Option<usize>,
        reason: String,
        fix: String,
    },
    /// An error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}

impl Error {
    /// A data-file error: `path` (shown), the 1-based `line` where one is known, what is wrong and the
    /// fix.
    pub fn data(
        path: impl std::fmt::Display,
        line: Option<usize>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.to_string(),
            line,
            reason: reason.into(),
            fix: fix.into(),
        }
    }
}

/// Checks that a scalar parameter is finite and non-negative.
pub fn check_non_negative(name: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() || value < 0.0 {
        return Err(Error::InvalidArgument {
            name,
            reason: format!("must be a finite number >= 0, got {value}"),
            fix: format!("pass a finite `{name}` >= 0"),
        });
    }
    Ok(())
}

/// Checks that `indices` (class labels, token ids) are integers that cast to `u32` unchanged: dtype
/// u8, u32 or i64, and for i64 none negative (Hugging Face's ignore index -100 would wrap around).
pub fn check_indices(name: &'static str, indices: &candle_core::Tensor) -> Result<()> {
    check_index_dtype(name, indices)?;
    if indices.dtype() == DType::I64 && indices.elem_count() > 0 {
        let smallest = indices.flatten_all()?.min(0)?.to_scalar::<i64>()?;
        if smallest < 0 {
            return Err(Error::InvalidArgument {
                name,
                reason: format!("holds {smallest}; indices start at 0"),
                fix: "drop the rows an ignore index (such as -100) marks before this call".into(),
            });
        }
    }
    Ok(())
}

/// The dtype half of [`check_indices`]: u8, u32 or i64. Reads no values, so it costs no device sync.
pub fn check_index_dtype(name: &'static str, indices: &candle_core::Tensor) -> Result<()> {
    match indices.dtype() {
        DType::U8 | DType::U32 | DType::I64 => Ok(()),
        other => Err(Error::InvalidArgument {
            name,
            reason: format!("dtype {other:?}"),
            fix: "pass indices as u32, u8 or i64".into(),
        }),
    }
}

/// Checks that a scalar parameter is finite and strictly positive.
pub fn check_positive(name: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() || value <= 0.0 {
        return Err(Error::InvalidArgument {
            name,
            reason: format!("must be a finite number > 0, got {value}"),
            fix: format!("pass a finite `{name}` > 0"),
        });
    }
    Ok(())
}

/// Checks that a count is at least one.
pub fn check_count(name: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::InvalidArgument {
            name,
            reason: "must be at least 1, got 0".into(),
            fix: format!("pass `{name}` >= 1"),
        });
    }
    Ok(())
}
