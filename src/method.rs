//! One interface for every training method: [`Method::step`] on a [`Batch`].
//!
//! A [`Batch`] is what a method sees of one batch of the user's training loop: the [`Target`] (what is
//! perturbed) and the model as closures over the (perturbed) point. Most methods need the scalar loss
//! only; SMART, VAT and target shift also need the model's outputs and the task loss on them
//! ([`Batch::with_outputs`]); YOPO needs the first layer split off ([`Batch::with_first_layer`]). A
//! method that lacks what it needs says so with an error naming the constructor to use.
//!
//! Every method returns a [`Step`]: the objective, and a `GradStore` for the user's optimiser. FreeAT
//! replays each batch, with an optimiser update after each replay; [`Method::replays`] says how many
//! times, so the loop below serves every method, and switching method is the one line that builds it:
//!
//! ```
//! use advtrain::{Batch, Fgm, Method, Rng, Target};
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Module, Optimizer};
//!
//! # fn main() -> advtrain::Result<()> {
//! let (device, mut rng) = (Device::Cpu, Rng::new(0));
//! let params = advtrain::init::SeededVarMap::new(0);
//! let model = candle_nn::linear(4, 3, params.var_builder(DType::F32, &device))?;
//! let mut opt = candle_nn::SGD::new(params.all_vars(), 0.1)?;
//! let x = rng.normal((8, 4), DType::F32, &device)?;
//! let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &device)?;
//! let outputs = |x: &Tensor| model.forward(x);
//! let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &y);
//!
//! let mut method: Box<dyn Method> = Box::new(Fgm::new(0.1)?); // the one line to change
//! let target = Target::input(&x)?;
//! for _ in 0..method.replays() {
//!     let step = method.step(&Batch::with_outputs(&target, &outputs, &task), &mut rng)?;
//!     opt.step(&step.grads)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Methods that add a penalty to the loss compose with any method through
//! [`crate::regulariser::Regularised`]. Book chapter: "Using advtrain in your own loop".

use crate::jet::Jet;
use crate::step::Step;
use crate::target::Target;
use crate::{Error, Result, Rng};
use candle_core::{Device, Tensor};

/// A function of the (perturbed) point, or of a model's intermediate values, to a tensor.
pub type Closure<'a> = &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

/// The loss as a function of a [`Jet`] of the point: the same model written with the jet's
/// operations, for the Laplacian regulariser's Taylor mode ([`crate::CurvatureMethod::Taylor`]).
pub type JetClosure<'a> = &'a dyn Fn(&Jet) -> candle_core::Result<Jet>;

/// What a step checks of the gradient with respect to the point. The check runs once per step, on the
/// first such gradient the method takes (the clean gradient, or the first ascent step's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientCheck {
    /// Finite and not identically zero ([`Error::NonFinite`], [`Error::ZeroGradient`]). The default
    /// on the CPU, where the check is one sum read in place.
    FiniteNonZero,
    /// Finite; an all-zero gradient gives a zero perturbation (every step direction is zero-safe).
    Finite,
    /// Nothing. The default on a GPU: a check copies a scalar to the host and waits for the device.
    Off,
}

impl GradientCheck {
    /// The default for tensors on `device`: [`GradientCheck::FiniteNonZero`] on the CPU,
    /// [`GradientCheck::Off`] elsewhere.
    pub fn default_for(device: &Device) -> Self {
        if device.is_cpu() {
            GradientCheck::FiniteNonZero
        } else {
            GradientCheck::Off
        }
    }
}

/// One batch as a method sees it: the target, and the model as closures over the point.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    target: &'a Target,
    loss: Loss<'a>,
    first_layer: Option<(Closure<'a>, Closure<'a>)>,
    jet: Option<JetClosure<'a>>,
    check: GradientCheck,
}

/// How the loss is given.
#[derive(Clone, Copy)]
enum Loss<'a> {
    /// Point to scalar loss.
    Direct(Closure<'a>),
    /// Point to outputs, outputs to scalar loss.
    Outputs {
        outputs: Closure<'a>,
        task: Closure<'a>,
    },
}

impl<'a> Batch<'a> {
    /// A batch whose `loss` maps the (perturbed) point to a scalar loss: enough for plain training,
    /// noise, FGM, gradient penalty, PGD, FreeAT, FreeLB and the Laplacian regulariser.
    pub fn new(target: &'a Target, loss: Closure<'a>) -> Self {
        Self {
            target,
            loss: Loss::Direct(loss),
            first_layer: None,
            jet: None,
            check: GradientCheck::default_for(target.point().device()),
        }
    }

    /// A batch whose `outputs` maps the point to the model's outputs `(batch, k)` (logits for
    /// classification) and `task` the outputs to a scalar loss; the loss is `task(outputs(point))`.
    /// SMART, VAT and target shift need this form; every other method accepts it. For unlabelled
    /// batches pass a task that returns zero.
    pub fn with_outputs(target: &'a Target, outputs: Closure<'a>, task: Closure<'a>) -> Self {
        Self {
            target,
            loss: Loss::Outputs { outputs, task },
            first_layer: None,
            jet: None,
            check: GradientCheck::default_for(target.point().device()),
        }
    }

    /// Splits the model at its first layer for YOPO: `first` maps the point to the first layer's
    /// output z, `rest` maps z to the scalar loss, so that `rest(first(point))` is the batch's loss.
    pub fn with_first_layer(mut self, first: Closure<'a>, rest: Closure<'a>) -> Self {
        self.first_layer = Some((first, rest));
        self
    }

    /// Adds the loss as a function of a [`Jet`] of the point (the same model, written with the jet's
    /// operations), for [`crate::CurvatureMethod::Taylor`]: `jet(&Jet::new(point, v))` must return
    /// the jet of the loss, whose value is `loss(point)`. Other methods ignore it.
    pub fn with_jet(mut self, jet: JetClosure<'a>) -> Self {
        self.jet = Some(jet);
        self
    }

    /// The jet form of the loss, or an error naming `method` and [`Batch::with_jet`].
    pub(crate) fn jet(&self, method: &'static str) -> Result<JetClosure<'a>> {
        self.jet.ok_or_else(|| Error::InvalidArgument {
            name: "batch",
            reason: format!("{method} needs the loss as a function of a jet of the point"),
            fix: "build the batch with .with_jet(&|x: &Jet| ...), the model written with Jet's operations".into(),
        })
    }

    /// Sets what each step checks of the point's gradient (default: [`GradientCheck::default_for`]
    /// the target's device).
    pub fn with_check(mut self, check: GradientCheck) -> Self {
        self.check = check;
        self
    }

    /// The target.
    pub fn target(&self) -> &'a Target {
        self.target
    }

    /// The gradient check.
    pub fn check(&self) -> GradientCheck {
        self.check
    }

    /// The loss at `point`: `loss(point)`, or `task(outputs(point))`.
    pub fn loss_at(&self, point: &Tensor) -> candle_core::Result<Tensor> {
        match self.loss {
            Loss::Direct(loss) => loss(point),
            Loss::Outputs { outputs, task } => task(&outputs(point)?),
        }
    }

    /// The model's outputs and the task loss on them; an error naming `method` when the batch was
    /// built from a loss alone.
    pub fn outputs_and_task(&self, method: &'static str) -> Result<(Closure<'a>, Closure<'a>)> {
        match self.loss {
            Loss::Outputs { outputs, task } => Ok((outputs, task)),
            Loss::Direct(_) => Err(Error::InvalidArgument {
                name: "batch",
                reason: format!(
                    "{method} compares the model's outputs at two points, and this batch has a loss only"
                ),
                fix: "build it with Batch::with_outputs(&target, &outputs, &task)".into(),
            }),
        }
    }

    /// The first layer and the rest of the model; an error naming `method` when not given.
    pub fn first_layer(&self, method: &'static str) -> Result<(Closure<'a>, Closure<'a>)> {
        self.first_layer.ok_or_else(|| Error::InvalidArgument {
            name: "batch",
            reason: format!("{method} takes its inner steps through the first layer alone"),
            fix: "split the model with Batch::with_first_layer(&first, &rest)".into(),
        })
    }

    /// Applies the batch's check to a gradient with respect to the point.
    pub(crate) fn check_gradient(&self, gradient: &Tensor) -> Result<()> {
        match self.check {
            GradientCheck::Off => Ok(()),
            GradientCheck::Finite => self.target.check_gradient_value(gradient, true),
            GradientCheck::FiniteNonZero => self.target.check_gradient_value(gradient, false),
        }
    }

    /// The check for a gradient that may be zero by construction: the first ascent gradient of a
    /// divergence between the outputs at two nearby points (SMART, VAT), which vanishes when the
    /// points coincide. Finite unless the check is off.
    pub(crate) fn check_gradient_finite(&self, gradient: &Tensor) -> Result<()> {
        match self.check {
            GradientCheck::Off => Ok(()),
            GradientCheck::Finite | GradientCheck::FiniteNonZero => {
                self.target.check_gradient_value(gradient, true)
            }
        }
    }

    /// The same batch with the gradient check off: a composed step's later parts, once the first
    /// part has checked.
    pub(crate) fn unchecked(&self) -> Self {
        self.with_check(GradientCheck::Off)
    }
}

/// A training method: one step on a batch, inside the user's training loop.
pub trait Method {
    /// One training step on `batch`: hand `step.grads` to the optimiser. Deterministic methods leave
    /// `rng` untouched.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step>;

    /// How many times to call [`Method::step`] on each batch, with an optimiser update after each:
    /// 1, except FreeAT's replays.
    fn replays(&self) -> usize {
        1
    }
}

impl<M: Method + ?Sized> Method for Box<M> {
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        (**self).step(batch, rng)
    }

    fn replays(&self) -> usize {
        (**self).replays()
    }
}

impl<M: Method + ?Sized> Method for &mut M {
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        (**self).step(batch, rng)
    }

    fn replays(&self) -> usize {
        (**self).replays()
    }
}

/// Plain training: one forward and one backward pass at the unperturbed point; the baseline every
/// method is compared with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Method for Plain {
    fn step(&mut self, batch: &Batch, _rng: &mut Rng) -> Result<Step> {
        crate::step::plain(batch.target(), &|p: &Tensor| batch.loss_at(p))
    }
}
