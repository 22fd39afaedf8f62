//! One KL (src/divergence.rs): the symmetric KL, VAT's KL and target shift's KL agree.

use advtrain::divergence::{
    cross_entropy_uniform, kl_from_logits, kl_from_probabilities, symmetric_kl_from_logits,
};
use advtrain::{Error, Rng};
use candle_core::{D, DType, Device, Tensor};

fn logits(seed: u64) -> Tensor {
    Rng::new(seed)
        .normal((5, 4), DType::F64, &Device::Cpu)
        .unwrap()
}

fn value(t: Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

#[test]
fn every_kl_is_the_one_definition() {
    let (a, b) = (logits(1), logits(2));
    let ab = value(kl_from_logits(&a, &b).unwrap());
    let ba = value(kl_from_logits(&b, &a).unwrap());
    assert!(
        ab > 0.0 && ba > 0.0 && (ab - ba).abs() > 1e-6,
        "KL is not symmetric"
    );
    let symmetric = value(symmetric_kl_from_logits(&a, &b).unwrap());
    assert!((symmetric - (ab + ba)).abs() < 1e-14);
    // On probabilities (target shift's form) it is the same number.
    let (p, q) = (
        candle_nn::ops::softmax(&a, D::Minus1).unwrap(),
        candle_nn::ops::softmax(&b, D::Minus1).unwrap(),
    );
    let per_example = kl_from_probabilities(&q, &p).unwrap();
    assert_eq!(per_example.dims(), [5]);
    assert!((value(per_example.mean_all().unwrap()) - ab).abs() < 1e-14);
    assert!(value(kl_from_logits(&a, &a).unwrap()).abs() < 1e-15);
    // H(u, p) = log k for uniform logits.
    let uniform = value(
        cross_entropy_uniform(&Tensor::zeros((3, 4), DType::F64, &Device::Cpu).unwrap()).unwrap(),
    );
    assert!((uniform - 4f64.ln()).abs() < 1e-14);
    assert!(matches!(
        kl_from_logits(&a, &a.t().unwrap()),
        Err(Error::ShapeMismatch { .. })
    ));
}
