//! What a step costs (src/step.rs): the pass counts every method reports match its cost rule.

use advtrain::toy::{Setup, problem};
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
            .step(&p.target, &p.loss)
            .unwrap()
            .passes,
        passes(2, 2, 0)
    );
    assert_eq!(
        GradientPenalty::new(0.1)
            .unwrap()
            .step(&p.target, &p.loss)
            .unwrap()
            .passes,
        passes(1, 2, 1)
    );
    let fd = GradientPenalty::new(0.1)
        .unwrap()
        .with_method(PenaltyMethod::FiniteDifference { h: 1e-3 })
        .unwrap();
    assert_eq!(fd.step(&p.target, &p.loss).unwrap().passes, passes(3, 3, 0));
    assert_eq!(
        Laplacian::new(0.1)
            .unwrap()
            .step(&p.target, &p.loss, &mut rng)
            .unwrap()
            .passes,
        passes(1, 3, 2)
    );
    let fd = Laplacian::new(0.1)
        .unwrap()
        .with_method(CurvatureMethod::FiniteDifference { h: 1e-2 })
        .unwrap();
    assert_eq!(
        fd.step(&p.target, &p.loss, &mut rng).unwrap().passes,
        passes(3, 3, 0)
    );
    let outputs = |x: &candle_core::Tensor| x.tanh()?.narrow(1, 0, 3);
    let task = |f: &candle_core::Tensor| f.sqr()?.mean_all();
    let exact = TargetShift::new(0.1, Divergence::SquaredError).unwrap();
    assert_eq!(
        exact
            .step(&p.target, &outputs, &task, &mut rng)
            .unwrap()
            .passes,
        passes(1, 4, 1)
    );
    let projected = exact.with_projections(1).unwrap();
    assert_eq!(
        projected
            .step(&p.target, &outputs, &task, &mut rng)
            .unwrap()
            .passes,
        passes(1, 2, 1)
    );
}
