//! The MNIST network: first- and second-order gradients match finite differences (so gradient penalty
//! trains through it), and spectral normalisation bounds its Lipschitz constant.

use advtrain::verify::{gradcheck, gradcheck_second_order};
use advtrain_experiments::cnn::Cnn;
use candle_core::{DType, Device, Tensor};

fn input(b: usize) -> Tensor {
    advtrain::Rng::new(4)
        .uniform(0.0, 1.0, (b, 784), DType::F64, &Device::Cpu)
        .unwrap()
}

#[test]
fn input_gradients_match_finite_differences_to_second_order() {
    let model = Cnn::new(1, false, DType::F64, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[3u32, 8], &Device::Cpu).unwrap();
    let loss = |x: &Tensor| candle_nn::loss::cross_entropy(&model.logits(x)?, &labels);
    let x = input(2);
    let first = gradcheck(loss, &x, 1e-5).unwrap();
    assert!(first.relative_error < 1e-6, "{}", first.relative_error);
    if advtrain::second_order::is_enabled() {
        let v = advtrain::Rng::new(5)
            .rademacher((2, 784), DType::F64, &Device::Cpu)
            .unwrap();
        let second = gradcheck_second_order(loss, &x, &v, 1e-4).unwrap();
        assert!(second.relative_error < 1e-5, "{}", second.relative_error);
    }
}

#[test]
fn spectral_normalisation_bounds_the_lipschitz_constant() {
    let model = Cnn::new(1, true, DType::F64, &Device::Cpu).unwrap();
    model.mode.set_train(true);
    for _ in 0..20 {
        model.logits(&input(1)).unwrap(); // power iterations advance in training mode
    }
    model.mode.set_train(false);
    // ||f(x) - f(y)|| <= L ||x - y||: GELU is 1.13-Lipschitz; the convolutions' norms are bounded by the
    // normalised kernels times the number of overlapping windows (at most 3 x 3 with stride 2).
    let x = input(1);
    let y = (&x + 0.01).unwrap();
    let change = advtrain::verify::l2_norm(
        &(model.logits(&x).unwrap() - model.logits(&y).unwrap()).unwrap(),
    )
    .unwrap();
    let distance = advtrain::verify::l2_norm(&(&x - &y).unwrap()).unwrap();
    let bound = 1.13f64.powi(2) * 3.0 * 3.0;
    assert!(
        change / distance <= bound,
        "{} > {bound}",
        change / distance
    );
    assert!(change > 0.0);
}
