//! Noise injection (src/noise.rs).

use advtrain::noise::{self, Noise};
use advtrain::verify::{Estimate, relative_error, scalar};
use advtrain::{Error, Rng, Target};
use candle_core::{DType, Device, Tensor, Var};

use crate::values;

#[test]
fn gaussian_noise_has_the_requested_moments_and_skips_padding() {
    let e = Tensor::ones((20, 30, 8), DType::F64, &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(
        (0..600)
            .map(|i| if i % 30 < 20 { 1.0 } else { 0.0 })
            .collect::<Vec<f64>>(),
        (20, 30),
        &Device::Cpu,
    )
    .unwrap();
    let target = Target::embedding_output(&e, Some(&mask)).unwrap();
    let delta = Noise::Gaussian { sigma: 0.5 }
        .sample(&target, &mut Rng::new(1))
        .unwrap();
    let d: Vec<Vec<Vec<f64>>> = delta.to_vec3().unwrap();
    let mut kept = Vec::new();
    for row in &d {
        for (t, v) in row.iter().enumerate() {
            if t >= 20 {
                assert!(v.iter().all(|x| *x == 0.0));
            } else {
                kept.extend(v);
            }
        }
    }
    let est = Estimate::from_samples(kept.clone()).unwrap();
    assert!((est.mean / est.std_error).abs() < 4.0);
    let var = est.variance();
    // The sample variance of n normals has standard error sigma^2 sqrt(2/n).
    assert!(
        (var - 0.25).abs() < 4.0 * 0.25 * (2.0 / kept.len() as f64).sqrt(),
        "{var}"
    );
}

#[test]
fn bernoulli_noise_is_inverted_dropout() {
    let x = Tensor::full(2.0f64, (50, 40), &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let noisy = values(
        &Noise::Bernoulli { keep: 0.8 }
            .apply(&target, &mut Rng::new(2))
            .unwrap(),
    );
    assert!(noisy.iter().all(|v| *v == 0.0 || (v - 2.5).abs() < 1e-15));
    let kept = noisy.iter().filter(|v| **v != 0.0).count() as f64 / noisy.len() as f64;
    let se = (0.8f64 * 0.2 / noisy.len() as f64).sqrt();
    assert!((kept - 0.8).abs() < 4.0 * se, "{kept}");
}

#[test]
fn uniform_noise_scales_within_bounds() {
    let x = Tensor::full(3.0f64, (10, 10), &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let noisy = values(
        &Noise::Uniform {
            low: 0.5,
            high: 1.5,
        }
        .apply(&target, &mut Rng::new(3))
        .unwrap(),
    );
    assert!(noisy.iter().all(|v| (1.5..4.5).contains(v)));
}

#[test]
fn multiplicative_weight_noise_trains_the_weight_through_the_mask() {
    // Dropout on a weight: d L(w * m) / dw = m * L'(w * m), not L'(w * m).
    let w =
        Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 3.0, 0.5], &Device::Cpu).unwrap()).unwrap();
    let target = Target::weight(&w).unwrap();
    let delta = Noise::Bernoulli { keep: 0.5 }
        .sample(&target, &mut Rng::new(4))
        .unwrap();
    let noisy = target.perturb(&delta).unwrap();
    let factor = (noisy.detach() / w.as_tensor()).unwrap();
    let grads = noisy.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let expected = ((noisy.detach() * 2.0).unwrap() * &factor).unwrap();
    assert!(relative_error(grads.get(w.as_tensor()).unwrap(), &expected).unwrap() < 1e-15);
}

#[test]
fn k_sample_average_is_unbiased_and_antithetic_pairs_cancel_odd_terms() {
    // L(x) = sum x_i^2: E[L(x + e)] = L(x) + sigma^2 D exactly.
    let x = Tensor::new(&[[0.3f64, -0.2, 0.9, 0.1]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let loss = |x: &Tensor| x.sqr()?.sum_all();
    let sigma = 0.3;
    let exact = 0.09 + 0.04 + 0.81 + 0.01 + sigma * sigma * 4.0;
    let mut rng = Rng::new(5);
    let noise = Noise::Gaussian { sigma };
    let plain: Vec<f64> = (0..400)
        .map(|_| {
            scalar(&noise::noisy_loss(&target, &loss, noise, 1, false, &mut rng).unwrap()).unwrap()
        })
        .collect();
    let pairs: Vec<f64> = (0..400)
        .map(|_| {
            scalar(&noise::noisy_loss(&target, &loss, noise, 2, true, &mut rng).unwrap()).unwrap()
        })
        .collect();
    let (plain, pairs) = (
        Estimate::from_samples(plain).unwrap(),
        Estimate::from_samples(pairs).unwrap(),
    );
    assert!(((plain.mean - exact) / plain.std_error).abs() < 4.0);
    assert!(((pairs.mean - exact) / pairs.std_error).abs() < 4.0);
    // (The tolerance 0.3 is about 4 standard errors of a sample variance from 400 draws.)
    // For a quadratic, an antithetic pair removes the linear term 2 x.e: its variance is that of
    // ||e||^2 alone, 2 sigma^4 D, against 2 sigma^4 D + 4 sigma^2 ||x||^2 for one plain draw.
    let plain_theory = 2.0 * sigma.powi(4) * 4.0 + 4.0 * sigma * sigma * 0.95;
    let pair_theory = 2.0 * sigma.powi(4) * 4.0;
    assert!(
        (plain.variance() / plain_theory - 1.0).abs() < 0.3,
        "{}",
        plain.variance()
    );
    assert!(
        (pairs.variance() / pair_theory - 1.0).abs() < 0.3,
        "{}",
        pairs.variance()
    );
}

#[test]
fn label_smoothing_is_the_mean_of_label_noise() {
    let labels = Tensor::new(&[0u32, 2, 1], &Device::Cpu).unwrap();
    let smooth: Vec<Vec<f64>> = noise::label_smoothing(&labels, 4, 0.2, DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (a, b) in smooth[0].iter().zip([0.85, 0.05, 0.05, 0.05]) {
        assert!((a - b).abs() < 1e-15, "{:?}", smooth[0]);
    }
    assert!(
        smooth
            .iter()
            .all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-15)
    );
    let mut rng = Rng::new(6);
    let draws = 20_000;
    let mut mean = vec![vec![0.0; 4]; 3];
    for _ in 0..draws {
        let noisy: Vec<Vec<f64>> = noise::label_noise(&labels, 4, 0.2, DType::F64, &mut rng)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (m, n) in mean.iter_mut().zip(&noisy) {
            for (a, b) in m.iter_mut().zip(n) {
                *a += b / draws as f64;
            }
        }
    }
    for (m, s) in mean.iter().zip(&smooth) {
        for (a, b) in m.iter().zip(s) {
            let se = (b * (1.0 - b) / draws as f64).sqrt();
            assert!((a - b).abs() < 4.0 * se, "{a} vs {b}");
        }
    }
    // Soft cross-entropy against one-hot rows is the ordinary cross-entropy.
    let logits = Rng::new(7)
        .normal((3, 4), DType::F64, &Device::Cpu)
        .unwrap();
    let one_hot = noise::label_smoothing(&labels, 4, 0.0, DType::F64).unwrap();
    let a = scalar(&advtrain::ops::soft_cross_entropy(&logits, &one_hot).unwrap()).unwrap();
    let b = scalar(&candle_nn::loss::cross_entropy(&logits, &labels).unwrap()).unwrap();
    assert!((a - b).abs() < 1e-14);
}

#[test]
fn bad_arguments_are_errors() {
    let x = Tensor::ones((2, 2), DType::F64, &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let mut rng = Rng::new(0);
    for bad in [
        Noise::Gaussian { sigma: -1.0 },
        Noise::Bernoulli { keep: 0.0 },
        Noise::Bernoulli { keep: 1.5 },
        Noise::Uniform {
            low: 1.0,
            high: 1.0,
        },
    ] {
        assert!(
            matches!(
                bad.sample(&target, &mut rng),
                Err(Error::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
    }
    let loss = |x: &Tensor| x.sum_all();
    let g = Noise::Gaussian { sigma: 0.1 };
    assert!(matches!(
        noise::noisy_loss(&target, &loss, g, 0, false, &mut rng),
        Err(Error::InvalidArgument { name: "k", .. })
    ));
    assert!(matches!(
        noise::noisy_loss(&target, &loss, g, 3, true, &mut rng),
        Err(Error::InvalidArgument { name: "k", .. })
    ));
    assert!(matches!(
        noise::noisy_loss(
            &target,
            &loss,
            Noise::Bernoulli { keep: 0.5 },
            2,
            true,
            &mut rng
        ),
        Err(Error::InvalidArgument {
            name: "antithetic",
            ..
        })
    ));
    let labels = Tensor::new(&[0u32, 5], &Device::Cpu).unwrap();
    assert!(matches!(
        noise::label_smoothing(&labels, 4, 0.1, DType::F64),
        Err(Error::InvalidArgument { name: "labels", .. })
    ));
    let ok = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    assert!(matches!(
        noise::label_smoothing(&ok, 4, 1.5, DType::F64),
        Err(Error::InvalidArgument {
            name: "smoothing",
            ..
        })
    ));
    let empty = Tensor::zeros(0, DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        noise::label_smoothing(&empty, 4, 0.1, DType::F64),
        Err(Error::EmptyBatch { .. })
    ));
}

#[test]
fn label_smoothing_refuses_float_and_negative_labels() {
    for labels in [
        Tensor::new(&[0f32, 2.7], &Device::Cpu).unwrap(),
        Tensor::new(&[0i64, -1], &Device::Cpu).unwrap(),
    ] {
        let Err(Error::InvalidArgument { name, .. }) =
            noise::label_smoothing(&labels, 3, 0.1, DType::F64)
        else {
            panic!("labels {labels} were cast to classes");
        };
        assert_eq!(name, "labels");
    }
}
