//! Target shift and the random-projection estimator (src/target_shift.rs).

use advtrain::target_shift::{self, Divergence};
use advtrain::verify::{Estimate, relative_error, scalar};
use advtrain::{Batch, Method};
use advtrain::{Error, Rng, Target, TargetShift};
use candle_core::{DType, Device, Tensor, Var};

#[test]
fn linear_model_has_frobenius_norm_as_gradient_sum() {
    // f(x) = x W^T: sum_i ||grad f_i||^2 = ||W||_F^2 for every example; MSE weighs it by 2.
    let mut rng = Rng::new(1);
    let w = rng.normal((4, 3), DType::F64, &Device::Cpu).unwrap();
    let x = rng.normal((5, 3), DType::F64, &Device::Cpu).unwrap();
    let f = |x: &Tensor| x.matmul(&w.t()?);
    let target = Target::input(&x).unwrap();
    let frobenius = w
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let exact = scalar(
        &target_shift::sum_of_squared_gradients(&target, &f, Divergence::SquaredError).unwrap(),
    )
    .unwrap();
    assert!(
        (exact - 2.0 * frobenius).abs() < 1e-12,
        "{exact} vs {}",
        2.0 * frobenius
    );
    let samples = (0..3000)
        .map(|_| {
            scalar(
                &target_shift::projected_sum_of_squared_gradients(
                    &target,
                    &f,
                    Divergence::SquaredError,
                    &mut rng,
                )
                .unwrap(),
            )
            .unwrap()
        })
        .collect();
    let e = Estimate::from_samples(samples).unwrap();
    assert!(
        ((e.mean - exact) / e.std_error).abs() < 3.0,
        "{} +- {} vs {exact}",
        e.mean,
        e.std_error
    );
}

#[test]
fn one_output_projection_is_exact() {
    let mut rng = Rng::new(2);
    let x = rng.normal((3, 4), DType::F64, &Device::Cpu).unwrap();
    let f = |x: &Tensor| x.tanh()?.sum_keepdim(1);
    let target = Target::input(&x).unwrap();
    let exact = scalar(
        &target_shift::sum_of_squared_gradients(&target, &f, Divergence::SquaredError).unwrap(),
    )
    .unwrap();
    let one = scalar(
        &target_shift::projected_sum_of_squared_gradients(
            &target,
            &f,
            Divergence::SquaredError,
            &mut rng,
        )
        .unwrap(),
    )
    .unwrap();
    assert!((one - exact).abs() < 1e-13);
}

#[test]
fn kl_weights_are_one_over_the_probabilities() {
    // sum_i f_i ||grad log f_i||^2 computed by hand, one output at a time.
    let mut rng = Rng::new(3);
    let w = rng.normal((3, 4), DType::F64, &Device::Cpu).unwrap();
    let x = rng.normal((2, 4), DType::F64, &Device::Cpu).unwrap();
    let f = |x: &Tensor| candle_nn::ops::softmax(&x.matmul(&w.t()?)?, 1);
    let target = Target::input(&x).unwrap();
    let ours = scalar(
        &target_shift::sum_of_squared_gradients(&target, &f, Divergence::KullbackLeibler).unwrap(),
    )
    .unwrap();
    let mut by_hand = 0.0;
    let probs: Vec<Vec<f64>> = f(&x).unwrap().to_vec2().unwrap();
    for (b, row) in probs.iter().enumerate() {
        for (i, p_bi) in row.iter().enumerate() {
            let var = Var::from_tensor(&x).unwrap();
            let log_fi = f(var.as_tensor())
                .unwrap()
                .log()
                .unwrap()
                .get(b)
                .unwrap()
                .get(i)
                .unwrap();
            let g = log_fi
                .backward()
                .unwrap()
                .get(var.as_tensor())
                .unwrap()
                .clone();
            by_hand += p_bi
                * g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
        }
    }
    by_hand /= 2.0;
    assert!(
        (ours - by_hand).abs() < 1e-12 * by_hand.abs().max(1.0),
        "{ours} vs {by_hand}"
    );
}

#[test]
fn divergence_is_zero_at_the_reference_and_positive_elsewhere() {
    let p = Tensor::new(&[[0.2f64, 0.3, 0.5]], &Device::Cpu).unwrap();
    let q = Tensor::new(&[[0.3f64, 0.3, 0.4]], &Device::Cpu).unwrap();
    for d in [Divergence::SquaredError, Divergence::KullbackLeibler] {
        assert!(scalar(&d.loss(&p, &p).unwrap()).unwrap().abs() < 1e-16);
        assert!(scalar(&d.loss(&q, &p).unwrap()).unwrap() > 0.0);
    }
}

#[test]
fn regulariser_gradient_matches_finite_differences() {
    let mut rng = Rng::new(4);
    let w = Var::from_tensor(&rng.normal((3, 4), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let x = rng.normal((2, 4), DType::F64, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    let f = |x: &Tensor| candle_nn::ops::softmax(&x.matmul(&w.as_tensor().t()?)?.tanh()?, 1);
    let task = |p: &Tensor| candle_nn::loss::nll(&p.log()?, &labels);
    let target = Target::input(&x).unwrap();
    let mut ts = TargetShift::new(0.5, Divergence::KullbackLeibler).unwrap();
    let step = ts
        .step(&Batch::with_outputs(&target, &f, &task), &mut rng)
        .unwrap();
    let grad = step.grads.get(w.as_tensor()).unwrap().clone();
    let objective = |wv: &Tensor| -> candle_core::Result<Tensor> {
        let f = |x: &Tensor| candle_nn::ops::softmax(&x.matmul(&wv.t()?)?.tanh()?, 1);
        let reg = target_shift::sum_of_squared_gradients(&target, &f, Divergence::KullbackLeibler)?;
        task(&f(&x)?)? + (reg * 0.125)?
    };
    let fd = advtrain::verify::finite_difference_gradient(objective, w.as_tensor(), 1e-5).unwrap();
    let err = relative_error(&grad, &fd).unwrap();
    assert!(err < 1e-8, "{err}");
}

#[test]
fn bad_arguments_are_errors() {
    let x = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let rank1 = |x: &Tensor| x.sum(1);
    assert!(matches!(
        target_shift::sum_of_squared_gradients(&target, &rank1, Divergence::SquaredError),
        Err(Error::ShapeMismatch {
            name: "output_fn",
            ..
        })
    ));
    let w = Var::from_tensor(&x).unwrap();
    let id = |x: &Tensor| Ok(x.clone());
    assert!(matches!(
        target_shift::sum_of_squared_gradients(
            &Target::weight(&w).unwrap(),
            &id,
            Divergence::SquaredError
        ),
        Err(Error::InvalidArgument { name: "target", .. })
    ));
    assert!(matches!(
        TargetShift::new(-1.0, Divergence::SquaredError),
        Err(Error::InvalidArgument { name: "sigma", .. })
    ));
    assert!(matches!(
        TargetShift::new(1.0, Divergence::SquaredError)
            .unwrap()
            .with_projections(0),
        Err(Error::InvalidArgument {
            name: "projections",
            ..
        })
    ));
}

#[test]
fn the_kl_form_refuses_logits() {
    let x = Tensor::new(&[[0.5f64, -1.0], [2.0, 0.3]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let logits = |x: &Tensor| x.affine(2.0, -1.0);
    let text =
        target_shift::sum_of_squared_gradients(&target, &logits, Divergence::KullbackLeibler)
            .unwrap_err()
            .to_string();
    assert!(
        text.contains("output_fn") && text.contains("softmax"),
        "{text}"
    );
    let probabilities = |x: &Tensor| candle_nn::ops::softmax(x, 1);
    assert!(
        target_shift::sum_of_squared_gradients(
            &target,
            &probabilities,
            Divergence::KullbackLeibler
        )
        .is_ok()
    );
}
