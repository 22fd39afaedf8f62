//! Projection onto eps-balls (src/ball.rs).

use advtrain::toy::{Setup, problem};
use advtrain::verify::relative_error;
use advtrain::{Ball, Rng, Scope, StepNorm, Target};
use candle_core::{DType, Device, Tensor};

fn norms(target: &Target, t: &Tensor, scope: Scope) -> Vec<f64> {
    advtrain::norm::squared_norms(target, t, scope)
        .unwrap()
        .sqrt()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn projections_land_in_the_ball_and_keep_inside_points() {
    // Property test: 200 random perturbations of random sizes, three balls.
    let p = problem(Setup::EmbeddingOutput, 1).unwrap();
    let t = &p.target;
    let mut rng = Rng::new(7);
    let balls = [
        Ball::L2 {
            radius: 0.5,
            scope: Scope::PerExample,
        },
        Ball::L2 {
            radius: 0.5,
            scope: Scope::PerBatch,
        },
        Ball::Linf { radius: 0.05 },
    ];
    for case in 0..200 {
        let scale = 10f64.powf(rng.uniform_f64(-3.0, 2.0));
        let delta = (rng
            .normal(t.point().shape(), DType::F64, &Device::Cpu)
            .unwrap()
            * scale)
            .unwrap();
        let delta = t.apply_mask(&delta).unwrap();
        for ball in balls {
            let projected = ball.project(t, &delta).unwrap();
            match ball {
                Ball::L2 { radius, scope } => {
                    for n in norms(t, &projected, scope) {
                        assert!(n <= radius * (1.0 + 1e-12), "case {case}: {n}");
                    }
                    // Projecting twice changes nothing.
                    let again = ball.project(t, &projected).unwrap();
                    assert!(relative_error(&again, &projected).unwrap() < 1e-14);
                }
                Ball::Linf { radius } => {
                    let max = projected
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    assert!(max <= radius, "case {case}: {max}");
                }
            }
        }
    }
    // A point inside the ball is its own projection.
    let small = (t
        .apply_mask(
            &rng.normal(t.point().shape(), DType::F64, &Device::Cpu)
                .unwrap(),
        )
        .unwrap()
        * 1e-4)
        .unwrap();
    let same = Ball::L2 {
        radius: 1.0,
        scope: Scope::PerExample,
    }
    .project(t, &small)
    .unwrap();
    assert!(relative_error(&same, &small).unwrap() < 1e-15);
}

#[test]
fn random_start_is_inside_the_ball_and_masked() {
    let p = problem(Setup::EmbeddingOutput, 2).unwrap();
    let ball = Ball::for_norm(StepNorm::L2(Scope::PerExample), 0.3).unwrap();
    let start = ball.random_point(&p.target, &mut Rng::new(1)).unwrap();
    assert!(
        norms(&p.target, &start, Scope::PerExample)
            .iter()
            .all(|n| *n <= 0.3 * (1.0 + 1e-12))
    );
    let masked = p.target.apply_mask(&start).unwrap();
    assert_eq!(
        masked.to_vec3::<f64>().unwrap(),
        start.to_vec3::<f64>().unwrap()
    );
    assert!(matches!(
        Ball::for_norm(StepNorm::Sign, -1.0),
        Err(advtrain::Error::InvalidArgument { .. })
    ));
}

#[test]
fn a_ball_with_a_negative_or_nan_radius_is_refused() {
    let p = problem(Setup::MlpInput, 1).unwrap();
    let delta = p.target.point().ones_like().unwrap();
    for radius in [-1.0, f64::NAN] {
        for ball in [
            Ball::L2 {
                radius,
                scope: Scope::PerBatch,
            },
            Ball::Linf { radius },
        ] {
            let text = ball.project(&p.target, &delta).unwrap_err().to_string();
            assert!(text.contains("radius"), "{text}");
        }
    }
}
