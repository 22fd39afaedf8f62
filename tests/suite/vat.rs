//! VAT (src/vat.rs): power iteration finds the top eigenvector of the KL Hessian.

use advtrain::divergence::kl_from_logits;
use advtrain::toy::{Activation, Mlp};
use advtrain::verify::scalar;
use advtrain::{Batch, Method};
use advtrain::{Error, Rng, Target, Vat};
use candle_core::{DType, Device, Tensor};

#[test]
fn power_iteration_converges_to_the_top_eigenvector_of_the_kl_hessian() {
    let model = Mlp::new(&[4, 8, 3], Activation::Tanh, 5, DType::F64, &Device::Cpu).unwrap();
    let x = Tensor::new(&[[0.4f64, -0.7, 0.2, 1.1]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let clean = model.forward(&x).unwrap().detach();
    let logits = |x: &Tensor| model.forward(x);
    let unlabelled = |z: &Tensor| z.zeros_like()?.sum_all();
    // The exact Hessian of r -> KL(p(x) || p(x + r)) at r = 0, from basis Hessian-vector products.
    let kl = |z: &Tensor| Ok(kl_from_logits(&clean, &model.forward(z)?)?);
    let h: Vec<Vec<f64>> = advtrain::laplacian::hessian_matrix(&target, &kl)
        .unwrap()
        .to_vec2()
        .unwrap();
    // Its top eigenvector, by many power iterations on the explicit 4 x 4 matrix.
    let mut v = vec![1.0, 0.5, -0.3, 0.2];
    for _ in 0..10_000 {
        let w: Vec<f64> = (0..4)
            .map(|i| (0..4).map(|j| h[i][j] * v[j]).sum())
            .collect();
        let n = w.iter().map(|a| a * a).sum::<f64>().sqrt();
        v = w.iter().map(|a| a / n).collect();
    }
    let top = Tensor::new(&[[v[0], v[1], v[2], v[3]]], &Device::Cpu).unwrap();
    let d = Vat::new(1.0)
        .unwrap()
        .with_power_iterations(30)
        .unwrap()
        .direction(
            &Batch::with_outputs(&target, &logits, &unlabelled),
            &clean,
            &mut Rng::new(1),
        )
        .unwrap();
    let cos = scalar(&(d * top).unwrap().sum_all().unwrap()).unwrap();
    assert!(cos.abs() > 0.999, "|cos| = {}", cos.abs());
}

#[test]
fn regulariser_needs_no_labels_is_zero_at_zero_radius_and_positive_otherwise() {
    let model = Mlp::new(&[4, 8, 3], Activation::Tanh, 6, DType::F64, &Device::Cpu).unwrap();
    let x = Rng::new(2)
        .normal((5, 4), DType::F64, &Device::Cpu)
        .unwrap();
    let target = Target::input(&x).unwrap();
    let logits = |x: &Tensor| model.forward(x);
    let unlabelled = |z: &Tensor| z.zeros_like()?.sum_all();
    let clean = logits(&x).unwrap();
    let zero = Vat::new(0.0)
        .unwrap()
        .regulariser(
            &Batch::with_outputs(&target, &logits, &unlabelled),
            &clean,
            &mut Rng::new(0),
        )
        .unwrap();
    assert!(scalar(&zero).unwrap().abs() < 1e-15);
    let reg = Vat::new(0.5)
        .unwrap()
        .regulariser(
            &Batch::with_outputs(&target, &logits, &unlabelled),
            &clean,
            &mut Rng::new(0),
        )
        .unwrap();
    assert!(scalar(&reg).unwrap() > 0.0);
    // The adversarial direction raises the KL above a random direction of the same size.
    let random = advtrain::StepNorm::L2(advtrain::Scope::PerExample)
        .direction(
            &target,
            &Rng::new(9)
                .normal((5, 4), DType::F64, &Device::Cpu)
                .unwrap(),
        )
        .unwrap();
    let at_random = kl_from_logits(
        &clean,
        &logits(&(&x + (random * 0.5).unwrap()).unwrap()).unwrap(),
    )
    .unwrap();
    assert!(scalar(&reg).unwrap() > scalar(&at_random).unwrap());
    // A semi-supervised step on an unlabelled batch: zero task loss.
    let no_labels = |z: &Tensor| z.zeros_like()?.sum_all();
    let step = Vat::new(0.5)
        .unwrap()
        .step(
            &Batch::with_outputs(&target, &logits, &no_labels),
            &mut Rng::new(0),
        )
        .unwrap();
    assert!(
        model
            .vars()
            .iter()
            .all(|v| step.grads.get(v.as_tensor()).is_some())
    );
    assert_eq!((step.passes.forward, step.passes.backward), (3, 2));
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        Vat::new(-1.0),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    assert!(matches!(
        Vat::new(1.0).unwrap().with_xi(0.0),
        Err(Error::InvalidArgument { name: "xi", .. })
    ));
    assert!(matches!(
        Vat::new(1.0).unwrap().with_power_iterations(0),
        Err(Error::InvalidArgument {
            name: "power_iterations",
            ..
        })
    ));
    let a = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(
        kl_from_logits(&a, &a.t().unwrap()),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn a_weight_target_is_refused_with_a_fix_that_applies() {
    let matrix = candle_core::Var::from_tensor(
        &Rng::new(3)
            .normal((6, 4), DType::F64, &Device::Cpu)
            .unwrap(),
    )
    .unwrap();
    let target = Target::embedding_matrix(&matrix).unwrap();
    let logits = |m: &Tensor| m.narrow(0, 0, 2);
    let unlabelled = |z: &Tensor| z.zeros_like()?.sum_all();
    let clean = logits(matrix.as_tensor()).unwrap();
    let Err(Error::InvalidArgument { name, fix, .. }) = Vat::new(1.0).unwrap().direction(
        &Batch::with_outputs(&target, &logits, &unlabelled),
        &clean,
        &mut Rng::new(0),
    ) else {
        panic!("VAT ran on a weight target");
    };
    assert_eq!(name, "target");
    assert!(fix.contains("Target::input"), "{fix}");
}
