//! The local-linearity regulariser (src/local_linearity.rs): the gap is zero for a loss linear in the
//! point and `||delta||^2 / 2` for a quadratic one, whose maximum over the ball the attack finds; the
//! step's weight gradient is the objective's at the attack's perturbation, checked against finite
//! differences in f64; it runs through the one `Method` interface.

use advtrain::toy::{Activation, Mlp};
use advtrain::verify::{relative_error, scalar, weight_gradcheck};
use advtrain::{Batch, LocalLinearity, Method, Rng, Scope, StepNorm, Target};
use candle_core::{DType, Device, Tensor};

fn point() -> Tensor {
    Rng::new(1)
        .normal((4, 5), DType::F64, &Device::Cpu)
        .unwrap()
}

#[test]
fn a_loss_linear_in_the_point_has_no_gap() {
    let x = point();
    let w = Rng::new(2)
        .normal((4, 5), DType::F64, &Device::Cpu)
        .unwrap();
    let target = Target::input(&x).unwrap();
    let loss = |x: &Tensor| (x * &w)?.sum_all()?.affine(1.0, 0.5);
    let regulariser = LocalLinearity::new(0.3).unwrap();
    let delta = regulariser
        .attack(&Batch::new(&target, &loss), &mut Rng::new(3))
        .unwrap();
    let gap = regulariser
        .gap(&Batch::new(&target, &loss), &delta)
        .unwrap();
    assert!(gap < 1e-12, "{gap}");
}

#[test]
fn the_attack_finds_the_largest_gap_of_a_quadratic_loss() {
    // L(x) = ||x||^2 / 2: the gap at delta is ||delta||^2 / 2 exactly, largest on the ball's
    // surface. In an L2 ball of radius eps per example (4 examples) that is 4 eps^2 / 2.
    let x = point();
    let target = Target::input(&x).unwrap();
    let loss = |x: &Tensor| x.sqr()?.sum_all()? * 0.5;
    let eps = 0.2;
    let regulariser = LocalLinearity::new(eps)
        .unwrap()
        .with_norm(StepNorm::L2(Scope::PerExample))
        .unwrap()
        .with_steps(5, eps / 2.0)
        .unwrap();
    let batch = Batch::new(&target, &loss);
    let delta = regulariser.attack(&batch, &mut Rng::new(4)).unwrap();
    let gap = regulariser.gap(&batch, &delta).unwrap();
    let largest = 4.0 * eps * eps / 2.0;
    assert!((gap - largest).abs() < 1e-9 * largest, "{gap} vs {largest}");
    let half_norm = advtrain::verify::l2_norm(&delta).unwrap().powi(2) / 2.0;
    assert!(
        (gap - half_norm).abs() < 1e-12,
        "the gap is ||delta||^2 / 2"
    );
}

#[test]
fn the_step_trains_on_the_objective_at_the_attacks_perturbation() {
    assert!(advtrain::second_order::is_enabled());
    let model = Mlp::new(&[5, 8, 3], Activation::Tanh, 1, DType::F64, &Device::Cpu).unwrap();
    let x = point();
    let labels = Tensor::new(&[0u32, 2, 1, 2], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let loss = |x: &Tensor| candle_nn::loss::cross_entropy(&model.forward(x)?, &labels);
    let batch = Batch::new(&target, &loss);
    let mut regulariser = LocalLinearity::new(0.5)
        .unwrap()
        .with_norm(StepNorm::L2(Scope::PerExample))
        .unwrap();
    let step = regulariser.step(&batch, &mut Rng::new(5)).unwrap();
    // The same seed gives the same perturbation; the objective there, by autodiff and by finite
    // differences of its value in each weight.
    let delta = regulariser.attack(&batch, &mut Rng::new(5)).unwrap();
    let objective = regulariser.objective_at(&batch, &delta).unwrap();
    assert!((scalar(&objective).unwrap() - scalar(&step.loss).unwrap()).abs() < 1e-12);
    assert!(scalar(&step.loss).unwrap() > scalar(&step.clean_loss).unwrap());
    let vars = model.vars();
    let expected = advtrain::verify::flat_gradient(&vars, &objective.backward().unwrap()).unwrap();
    let got = advtrain::verify::flat_gradient(&vars, &step.grads).unwrap();
    assert!(relative_error(&got, &expected).unwrap() < 1e-12);
    let check = weight_gradcheck(
        &vars,
        &step.grads,
        || scalar(&regulariser.objective_at(&batch, &delta)?),
        3,
        1e-6,
    )
    .unwrap();
    assert!(check.relative_error < 1e-6, "{}", check.relative_error);
    assert_eq!(step.passes.double_backward, 1);
}

#[test]
fn bad_settings_name_the_argument() {
    for (result, name) in [
        (LocalLinearity::new(-1.0).map(|_| ()), "eps"),
        (
            LocalLinearity::new(0.1)
                .unwrap()
                .with_steps(0, 0.1)
                .map(|_| ()),
            "steps",
        ),
        (
            LocalLinearity::new(0.1)
                .unwrap()
                .with_weights(f64::NAN, 1.0)
                .map(|_| ()),
            "lambda",
        ),
    ] {
        let e = result.unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn a_zero_radius_names_eps_not_the_derived_step() {
    let text = LocalLinearity::new(0.0).unwrap_err().to_string();
    assert!(text.contains("`eps`"), "{text}");
}
