//! Dropout with a held mask (src/dropout.rs).

use advtrain::{Error, HeldDropout, Rng};
use candle_core::{DType, Device, Tensor};

#[test]
fn a_held_mask_gives_identical_passes_until_resampled() {
    let x = Rng::new(1)
        .normal((4, 10), DType::F64, &Device::Cpu)
        .unwrap();
    let dropout = HeldDropout::new(0.5).unwrap();
    let mut rng = Rng::new(2);
    dropout
        .resample(x.shape(), DType::F64, &Device::Cpu, &mut rng)
        .unwrap();
    let a: Vec<Vec<f64>> = dropout.forward(&x, true).unwrap().to_vec2().unwrap();
    let b: Vec<Vec<f64>> = dropout.forward(&x, true).unwrap().to_vec2().unwrap();
    assert_eq!(a, b);
    let xs: Vec<Vec<f64>> = x.to_vec2().unwrap();
    for (row, xrow) in a.iter().zip(&xs) {
        for (v, xv) in row.iter().zip(xrow) {
            assert!(*v == 0.0 || (v - 2.0 * xv).abs() < 1e-15);
        }
    }
    dropout
        .resample(x.shape(), DType::F64, &Device::Cpu, &mut rng)
        .unwrap();
    let c: Vec<Vec<f64>> = dropout.forward(&x, true).unwrap().to_vec2().unwrap();
    assert_ne!(a, c);
    assert_eq!(
        dropout
            .forward(&x, false)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap(),
        xs
    );
}

#[test]
fn missing_or_mismatched_masks_are_errors() {
    let x = Tensor::ones((2, 3), DType::F64, &Device::Cpu).unwrap();
    let dropout = HeldDropout::new(0.1).unwrap();
    assert!(matches!(
        dropout.forward(&x, true),
        Err(Error::InvalidArgument { name: "mask", .. })
    ));
    dropout
        .resample((3, 3), DType::F64, &Device::Cpu, &mut Rng::new(0))
        .unwrap();
    assert!(matches!(
        dropout.forward(&x, true),
        Err(Error::ShapeMismatch { name: "mask", .. })
    ));
    dropout
        .resample((2, 3), DType::F32, &Device::Cpu, &mut Rng::new(0))
        .unwrap();
    assert!(matches!(
        dropout.forward(&x, true),
        Err(Error::DTypeMismatch { name: "mask", .. })
    ));
    assert!(matches!(
        HeldDropout::new(1.0),
        Err(Error::InvalidArgument { name: "drop", .. })
    ));
}
