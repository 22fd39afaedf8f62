//! What a step costs (src/step.rs): the pass counts every method reports match its cost rule.

use advtrain::toy::{Setup, problem};
use advtrain::{Batch, Method};
use advtrain::{
    CurvatureMethod, Divergence, Fgm, GradientPenalty, Laplacian, Passes, PenaltyMethod, Rng,
    TargetShift,
};

fn passes(forward: usize, backward: usize, double_backward: usize) -> Passes {
    Passes {
        forward,
        backward,
        double_backward,
    }
}

#[test]
fn every_method_reports_its_passes() {
    let p = problem(Setup::MlpInput, 1).unwrap();
    let mut rng = Rng::new(1);
    assert_eq!(
        Fgm::new(0.1)
            .unwrap()
            .step(&p.batch(), &mut Rng::new(0))
            .unwrap()
            .passes,
        passes(2, 2, 0)
    );
    assert_eq!(
        GradientPenalty::new(0.1)
            .unwrap()
            .step(&p.batch(), &mut Rng::new(0))
            .unwrap()
            .passes,
        passes(1, 2, 1)
    );
    let mut fd = GradientPenalty::new(0.1)
        .unwrap()
        .with_method(PenaltyMethod::FiniteDifference { h: 1e-3 })
        .unwrap();
    assert_eq!(
        fd.step(&p.batch(), &mut Rng::new(0)).unwrap().passes,
        passes(3, 3, 0)
    );
    assert_eq!(
        Laplacian::new(0.1)
            .unwrap()
            .step(&p.batch(), &mut rng)
            .unwrap()
            .passes,
        passes(1, 3, 2)
    );
    let mut fd = Laplacian::new(0.1)
        .unwrap()
        .with_method(CurvatureMethod::FiniteDifference { h: 1e-2 })
        .unwrap();
    assert_eq!(
        fd.step(&p.batch(), &mut rng).unwrap().passes,
        passes(3, 3, 0)
    );
    let outputs = |x: &candle_core::Tensor| x.tanh()?.narrow(1, 0, 3);
    let task = |f: &candle_core::Tensor| f.sqr()?.mean_all();
    let mut exact = TargetShift::new(0.1, Divergence::SquaredError).unwrap();
    assert_eq!(
        exact
            .step(&Batch::with_outputs(&p.target, &outputs, &task), &mut rng)
            .unwrap()
            .passes,
        passes(1, 4, 1)
    );
    let mut projected = exact.with_projections(1).unwrap();
    assert_eq!(
        projected
            .step(&Batch::with_outputs(&p.target, &outputs, &task), &mut rng)
            .unwrap()
            .passes,
        passes(1, 2, 1)
    );
}

#[test]
fn new_methods_report_their_passes() {
    use advtrain::{FreeAt, FreeLb, Pgd, Smart, SmartDivergence, Vat, Yopo};
    let p = problem(Setup::EmbeddingOutput, 1).unwrap();
    let mut rng = Rng::new(1);
    assert_eq!(
        Pgd::new(0.1, 0.05, 3)
            .unwrap()
            .step(&p.batch(), &mut rng)
            .unwrap()
            .passes,
        passes(4, 4, 0)
    );
    assert_eq!(
        FreeAt::new(0.1, 3)
            .unwrap()
            .step(&p.batch(), &mut Rng::new(0))
            .unwrap()
            .passes,
        passes(1, 1, 0)
    );
    assert_eq!(
        FreeLb::new(0.1, 3)
            .unwrap()
            .step(&p.batch(), &mut rng)
            .unwrap()
            .passes,
        passes(3, 3, 0)
    );
    let identity = |z: &candle_core::Tensor| Ok(z.clone());
    let mut yopo = Yopo::new(0.1, 0.05, 2, 3).unwrap();
    assert_eq!(
        yopo.step(
            &Batch::new(&p.target, &p.loss).with_first_layer(&identity, &p.loss),
            &mut rng
        )
        .unwrap()
        .passes,
        passes(2, 2, 0)
    );
    let logits = |e: &candle_core::Tensor| e.mean(1)?.narrow(1, 0, 3);
    let task = |z: &candle_core::Tensor| z.sqr()?.mean_all();
    let mut smart = Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap();
    assert_eq!(
        smart
            .step(&Batch::with_outputs(&p.target, &logits, &task), &mut rng)
            .unwrap()
            .passes,
        passes(3, 2, 0)
    );
    assert_eq!(
        Vat::new(0.1)
            .unwrap()
            .step(&Batch::with_outputs(&p.target, &logits, &task), &mut rng)
            .unwrap()
            .passes,
        passes(3, 2, 0)
    );
}

#[test]
fn accumulating_two_half_batches_gives_the_full_batch_gradient() {
    use advtrain::toy::{Activation, Mlp, classification_batch};
    use advtrain::{Accumulator, FreeLb, Target};
    use candle_core::{DType, Device, Tensor};
    let model = Mlp::new(&[4, 8, 3], Activation::Tanh, 2, DType::F64, &Device::Cpu).unwrap();
    let (x, y) = classification_batch(8, 4, 3, DType::F64, &Device::Cpu, &mut Rng::new(3)).unwrap();
    let full_loss = |x: &Tensor| model.loss(x, &y);
    let full = FreeLb::new(0.1, 1)
        .unwrap()
        .step(
            &Batch::new(&Target::input(&x).unwrap(), &full_loss),
            &mut Rng::new(0),
        )
        .unwrap();
    let mut acc = Accumulator::new(2).unwrap();
    let mut out = None;
    for half in 0..2 {
        let (xh, yh) = (
            x.narrow(0, 4 * half, 4).unwrap(),
            y.narrow(0, 4 * half, 4).unwrap(),
        );
        let loss = |x: &Tensor| model.loss(x, &yh);
        // K = 1 from zero is the plain step, so the halves must add up to the full batch exactly.
        let step = FreeLb::new(0.1, 1)
            .unwrap()
            .step(
                &Batch::new(&Target::input(&xh).unwrap(), &loss),
                &mut Rng::new(0),
            )
            .unwrap();
        out = acc.add(step).unwrap();
        assert_eq!(out.is_some(), half == 1);
    }
    let out = out.unwrap();
    let vars = model.vars();
    let err = advtrain::verify::relative_error(
        &advtrain::verify::flat_gradient(&vars, &out.grads).unwrap(),
        &advtrain::verify::flat_gradient(&vars, &full.grads).unwrap(),
    )
    .unwrap();
    assert!(err < 1e-14, "{err}");
    let l = |s: &advtrain::Step| s.loss.to_scalar::<f64>().unwrap();
    assert!((l(&out) - l(&full)).abs() < 1e-14);
    assert_eq!(out.passes.forward, 2);
    assert!(Accumulator::new(0).is_err());
}

#[test]
fn plain_step_is_one_forward_and_one_backward_at_the_point() {
    let p = problem(Setup::MlpInput, 2).unwrap();
    let step = advtrain::Plain.step(&p.batch(), &mut Rng::new(0)).unwrap();
    assert_eq!(step.passes, passes(1, 1, 0));
    let direct = p.target.loss(&p.loss).unwrap().backward().unwrap();
    let err = advtrain::verify::relative_error(
        &advtrain::verify::flat_gradient(&p.vars, &step.grads).unwrap(),
        &advtrain::verify::flat_gradient(&p.vars, &direct).unwrap(),
    )
    .unwrap();
    assert!(err < 1e-15);
}
