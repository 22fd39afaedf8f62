//! The verification toolkit (src/verify.rs).

use advtrain::verify::*;
use advtrain::{Error, laplacian::ProbeKind};
use candle_core::{DType, Device, Tensor};

#[test]
fn fit_order_recovers_exact_power_laws() {
    let steps = log_spaced(1e-4, 1e-1, 7);
    for p in [1.0, 2.0, 4.0] {
        let errors: Vec<f64> = steps.iter().map(|s| 3.0 * s.powf(p)).collect();
        let fit = fit_order(&steps, &errors).unwrap();
        assert!((fit.slope - p).abs() < 1e-12, "slope {} for {p}", fit.slope);
        assert!((fit.intercept - 3f64.ln()).abs() < 1e-10);
        assert!((fit.r_squared - 1.0).abs() < 1e-12);
    }
}

#[test]
fn fit_order_rejects_bad_input() {
    assert!(matches!(
        fit_order(&[1.0, 2.0], &[1.0, 2.0]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        fit_order(&[1.0, 2.0, 3.0], &[1.0, 0.0, 2.0]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        fit_order(&[1.0, 2.0, 3.0], &[1.0, f64::NAN, 2.0]),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn log_spaced_spans_the_range() {
    let s = log_spaced(1e-4, 1e-1, 4);
    assert_eq!(s.len(), 4);
    assert!((s[0] - 1e-4).abs() < 1e-18 && (s[3] - 1e-1).abs() < 1e-15);
    assert!((s[1] - 1e-3).abs() < 1e-15);
}

#[test]
fn gauss_hermite_integrates_normal_moments_exactly() {
    let (t, w) = gauss_hermite(10).unwrap();
    let pi = std::f64::consts::PI;
    // E[e^k] for e ~ N(0, 1): 1, 0, 1, 0, 3, 0, 15, 0, 105.
    let moments = [1.0, 0.0, 1.0, 0.0, 3.0, 0.0, 15.0, 0.0, 105.0];
    for (k, expected) in moments.iter().enumerate() {
        let value: f64 = t
            .iter()
            .zip(&w)
            .map(|(t, w)| w / pi.sqrt() * (2f64.sqrt() * t).powi(k as i32))
            .sum();
        assert!((value - expected).abs() < 1e-11, "moment {k}: {value}");
    }
}

#[test]
fn relative_error_and_norms() {
    let d = Device::Cpu;
    let a = Tensor::new(&[3.0f64, 4.0], &d).unwrap();
    let b = Tensor::new(&[3.0f64, 4.5], &d).unwrap();
    assert_eq!(l2_norm(&a).unwrap(), 5.0);
    assert!(
        (relative_error(&a, &b).unwrap()
            - 0.5
                / b.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    .sqrt())
        .abs()
            < 1e-15
    );
    assert_eq!(
        relative_error(&a.zeros_like().unwrap(), &a.zeros_like().unwrap()).unwrap(),
        0.0
    );
    let c = Tensor::new(&[1.0f64, 2.0, 3.0], &d).unwrap();
    assert!(matches!(
        relative_error(&a, &c),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn gradcheck_detects_right_and_wrong_gradients() {
    let d = Device::Cpu;
    let x = Tensor::new(&[0.3f64, -1.2, 0.7], &d).unwrap();
    let good = gradcheck(|x| x.sin()?.sqr()?.sum_all(), &x, 1e-5).unwrap();
    assert!(good.relative_error < 1e-9, "{good:?}");
    // A function whose autodiff gradient is cut (detach) is caught.
    let bad = gradcheck(|x| x.detach().sin()?.sum_all()? + x.sum_all()?, &x, 1e-5).unwrap();
    assert!(bad.relative_error > 0.1, "{bad:?}");
}

#[test]
fn second_order_gradcheck_matches_on_smooth_function() {
    let d = Device::Cpu;
    let mut rng = advtrain::Rng::new(1);
    let x = rng.normal(5, DType::F64, &d).unwrap();
    let v = rng.normal(5, DType::F64, &d).unwrap();
    let check = gradcheck_second_order(|x| x.tanh()?.powf(3.0)?.sum_all(), &x, &v, 1e-4).unwrap();
    assert!(check.relative_error < 1e-7 && check.norm > 0.0, "{check:?}");
    let _ = ProbeKind::Rademacher;
}

#[test]
fn estimate_mean_and_standard_error() {
    let e = Estimate::from_samples(vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(e.mean, 2.5);
    assert!((e.variance() - 5.0 / 3.0).abs() < 1e-12);
    assert!((e.std_error - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
    assert!(Estimate::from_samples(vec![1.0]).is_err());
}

#[test]
fn finite_difference_gradient_needs_positive_step() {
    let x = Tensor::new(&[1.0f64], &Device::Cpu).unwrap();
    assert!(matches!(
        finite_difference_gradient(|x| x.sum_all(), &x, 0.0),
        Err(Error::InvalidArgument { name: "h", .. })
    ));
    assert!(matches!(
        scalar(&Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap()),
        Err(Error::ShapeMismatch { .. })
    ));
}
