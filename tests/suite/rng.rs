//! The crate's seeded randomness (src/rng.rs).

use advtrain::verify::Estimate;
use advtrain::{Error, Rng};
use candle_core::{DType, Device};

fn draw(seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<f64> = rng
        .normal(50, DType::F64, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    out.extend(
        rng.rademacher(50, DType::F64, &Device::Cpu)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap(),
    );
    out.extend(
        rng.uniform(-1.0, 2.0, 50, DType::F64, &Device::Cpu)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap(),
    );
    out.extend(
        rng.bernoulli(0.3, 50, DType::F64, &Device::Cpu)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap(),
    );
    out
}

#[test]
fn same_seed_same_numbers_other_seed_other_numbers() {
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42), draw(43));
    let mut a = Rng::new(7);
    let mut b = Rng::new(7);
    assert_eq!(a.fork().standard_normal(), b.fork().standard_normal());
    assert_ne!(
        Rng::new(7).fork().standard_normal(),
        Rng::new(7).standard_normal()
    );
}

#[test]
fn distributions_have_their_moments() {
    let mut rng = Rng::new(1);
    let n = 20_000;
    let normal = Estimate::from_samples(
        rng.normal(n, DType::F64, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap(),
    )
    .unwrap();
    assert!(normal.mean.abs() < 4.0 * normal.std_error);
    assert!((normal.variance() - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt());
    let signs: Vec<f64> = rng
        .rademacher(n, DType::F64, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(signs.iter().all(|s| *s == 1.0 || *s == -1.0));
    let signs = Estimate::from_samples(signs).unwrap();
    assert!(signs.mean.abs() < 4.0 * signs.std_error);
    let u = Estimate::from_samples(
        rng.uniform(2.0, 4.0, n, DType::F64, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap(),
    )
    .unwrap();
    assert!(u.samples.iter().all(|v| (2.0..4.0).contains(v)));
    assert!((u.mean - 3.0).abs() < 4.0 * u.std_error);
    let bern = Estimate::from_samples(
        rng.bernoulli(0.25, n, DType::F64, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap(),
    )
    .unwrap();
    assert!((bern.mean - 0.25).abs() < 4.0 * bern.std_error);
}

#[test]
fn tensors_come_in_the_requested_dtype_and_shape() {
    let t = Rng::new(2)
        .normal((3, 4), DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(t.dims(), &[3, 4]);
}

#[test]
fn bad_parameters_are_errors() {
    let mut rng = Rng::new(3);
    assert!(matches!(
        rng.bernoulli(1.5, 3, DType::F64, &Device::Cpu),
        Err(Error::InvalidArgument { name: "p", .. })
    ));
    assert!(matches!(
        rng.uniform(1.0, 1.0, 3, DType::F64, &Device::Cpu),
        Err(Error::InvalidArgument { .. })
    ));
}
