//! Spectral normalisation and the Lipschitz bound (src/spectral_norm.rs).

use advtrain::equivalence::matrix_with_spectrum;
use advtrain::spectral_norm::{self, SpectralNorm, SpectralNormLinear};
use advtrain::verify::{relative_error, scalar};
use advtrain::{Error, Rng};
use candle_core::{DType, Device, Module, Tensor, Var};

#[test]
fn converged_estimate_equals_the_largest_singular_value() {
    let mut rng = Rng::new(1);
    for spectrum in [
        vec![4.0, 3.9, 1.0],
        vec![1.0, 0.2, 0.1, 0.05],
        vec![0.01, 0.001],
    ] {
        let w = matrix_with_spectrum(7, 5, &spectrum, &mut rng).unwrap();
        let s = spectral_norm::spectral_norm(&w, 1e-14, 100_000).unwrap();
        assert!(
            (s - spectrum[0]).abs() / spectrum[0] < 1e-9,
            "{s} vs {}",
            spectrum[0]
        );
    }
}

#[test]
fn evaluation_mode_freezes_the_vectors_and_training_advances_them() {
    let mut rng = Rng::new(2);
    let w = matrix_with_spectrum(6, 6, &[2.0, 1.9, 1.0], &mut rng).unwrap();
    let mut state = SpectralNorm::new(&w, &mut rng).unwrap();
    let u0 = state.vectors().0.clone();
    let a = scalar(&state.sigma(&w, false).unwrap()).unwrap();
    let b = scalar(&state.sigma(&w, false).unwrap()).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        u0.to_vec2::<f64>().unwrap(),
        state.vectors().0.to_vec2::<f64>().unwrap()
    );
    let c = scalar(&state.sigma(&w, true).unwrap()).unwrap();
    assert_ne!(
        u0.to_vec2::<f64>().unwrap(),
        state.vectors().0.to_vec2::<f64>().unwrap()
    );
    // With a close second singular value, more iterations move the estimate towards sigma_max.
    assert!((c - 2.0).abs() <= (a - 2.0).abs());
}

#[test]
fn normalised_linear_layer_has_unit_spectral_norm_and_trains() {
    let mut rng = Rng::new(3);
    let w = Var::from_tensor(&matrix_with_spectrum(4, 6, &[5.0, 2.0, 1.0, 0.5], &mut rng).unwrap())
        .unwrap();
    let b =
        Var::from_tensor(&Tensor::new(&[0.1f64, 0.2, 0.3, 0.4], &Device::Cpu).unwrap()).unwrap();
    let layer = SpectralNormLinear::new(w.clone(), Some(b.clone()), &mut rng).unwrap();
    for _ in 0..30 {
        layer.normalised_weight().unwrap();
    }
    let wn = layer.normalised_weight().unwrap();
    assert!((spectral_norm::spectral_norm(&wn, 1e-14, 100_000).unwrap() - 1.0).abs() < 1e-9);
    let x = rng.normal((3, 6), DType::F64, &Device::Cpu).unwrap();
    let y = layer.forward(&x).unwrap();
    let expected = x
        .matmul(&wn.t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap();
    assert!(relative_error(&y, &expected).unwrap() < 1e-12);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
}

#[test]
fn conv_and_embedding_weights_are_reshaped_to_matrices() {
    let mut rng = Rng::new(4);
    let conv = rng.normal((4, 2, 3, 3), DType::F64, &Device::Cpu).unwrap();
    let as_matrix = conv.reshape((4, 18)).unwrap();
    let a = spectral_norm::spectral_norm(&conv, 1e-14, 100_000).unwrap();
    let b = spectral_norm::spectral_norm(&as_matrix, 1e-14, 100_000).unwrap();
    assert!((a - b).abs() < 1e-12);
    let mut state = SpectralNorm::new(&conv, &mut rng)
        .unwrap()
        .with_power_iterations(50)
        .unwrap();
    let s = scalar(&state.sigma(&conv, true).unwrap()).unwrap();
    assert!((s - a).abs() / a < 1e-6, "{s} vs {a}");
}

#[test]
fn bad_arguments_are_errors() {
    let mut rng = Rng::new(5);
    let v = Tensor::ones(4, DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(
        SpectralNorm::new(&v, &mut rng),
        Err(Error::ShapeMismatch { name: "weight", .. })
    ));
    let w = Tensor::ones((3, 4), DType::F64, &Device::Cpu).unwrap();
    let mut state = SpectralNorm::new(&w, &mut rng).unwrap();
    let other = Tensor::ones((4, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(
        state.sigma(&other, true),
        Err(Error::ShapeMismatch { name: "weight", .. })
    ));
    assert!(matches!(
        SpectralNorm::new(&w, &mut rng)
            .unwrap()
            .with_power_iterations(0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        SpectralNorm::new(&w, &mut rng).unwrap().with_eps(0.0),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    // A zero weight has spectral norm 0: dividing by it would give NaN.
    let zero = w.zeros_like().unwrap();
    assert!(matches!(
        SpectralNorm::new(&zero, &mut rng)
            .unwrap()
            .normalise(&zero, true),
        Err(Error::InvalidArgument { name: "weight", .. })
    ));
    assert!(matches!(
        spectral_norm::lipschitz_bound(&[]),
        Err(Error::InvalidArgument {
            name: "weights",
            ..
        })
    ));
}
