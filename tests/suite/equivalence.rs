//! Every equivalence of the book holds on small f64 models (src/equivalence.rs).

use advtrain::equivalence::{self, Check};
use advtrain::laplacian::ProbeKind;
use advtrain::toy::Setup;
use advtrain::{Divergence, Scope, StepNorm};
use advtrain::{Method, Rng};

fn assert_pass(check: Check) {
    assert!(
        check.pass,
        "{}: measured {} {} (expected {}); left {} right {}",
        check.identity, check.measure, check.measured, check.expected, check.left, check.right
    );
}

fn fgm_matches_penalty(setup: Setup, norm: StepNorm) {
    assert_pass(equivalence::fgm_matches_gradient_penalty(setup, norm).unwrap());
}

#[test]
fn fgm_raw_step_is_half_squared_gradient_penalty_on_mlp_input() {
    fgm_matches_penalty(Setup::MlpInput, StepNorm::Raw);
}

#[test]
fn fgm_normalised_step_is_norm_penalty_on_mlp_input() {
    fgm_matches_penalty(Setup::MlpInput, StepNorm::L2(Scope::PerExample));
    fgm_matches_penalty(Setup::MlpInput, StepNorm::L2(Scope::PerBatch));
}

#[test]
fn fgm_sign_step_is_l1_penalty_on_mlp_input() {
    fgm_matches_penalty(Setup::MlpInput, StepNorm::Sign);
}

#[test]
fn fgm_equals_gradient_penalty_on_embedding_output() {
    for norm in [
        StepNorm::Raw,
        StepNorm::L2(Scope::PerExample),
        StepNorm::L2(Scope::PerBatch),
        StepNorm::Sign,
    ] {
        fgm_matches_penalty(Setup::EmbeddingOutput, norm);
    }
}

#[test]
fn fgm_equals_gradient_penalty_on_embedding_matrix() {
    for norm in [StepNorm::Raw, StepNorm::L2(Scope::PerBatch), StepNorm::Sign] {
        fgm_matches_penalty(Setup::EmbeddingMatrix, norm);
    }
}

#[test]
fn noise_is_laplacian_to_fourth_order() {
    assert_pass(equivalence::noise_matches_laplacian().unwrap());
}

#[test]
fn target_shift_is_weighted_gradient_norm_to_fourth_order() {
    assert_pass(
        equivalence::target_shift_matches_gradient_norms(Divergence::SquaredError).unwrap(),
    );
    assert_pass(
        equivalence::target_shift_matches_gradient_norms(Divergence::KullbackLeibler).unwrap(),
    );
}

#[test]
fn hutchinson_is_unbiased_for_both_probe_kinds() {
    assert_pass(equivalence::hutchinson_is_unbiased(ProbeKind::Rademacher, 2000).unwrap());
    assert_pass(equivalence::hutchinson_is_unbiased(ProbeKind::Gaussian, 2000).unwrap());
}

#[test]
fn rademacher_probes_have_lower_variance_than_gaussian_as_theory_says() {
    assert_pass(equivalence::rademacher_variance_below_gaussian(4000).unwrap());
}

#[test]
fn random_projection_estimator_is_unbiased() {
    assert_pass(equivalence::projection_is_unbiased(Divergence::SquaredError, 2000).unwrap());
    assert_pass(equivalence::projection_is_unbiased(Divergence::KullbackLeibler, 2000).unwrap());
}

#[test]
fn finite_difference_curvature_converges_at_order_two() {
    assert_pass(equivalence::curvature_finite_difference_converges().unwrap());
}

#[test]
fn finite_difference_gradient_penalty_converges_at_order_two() {
    assert_pass(equivalence::penalty_finite_difference_converges(Setup::MlpInput).unwrap());
    assert_pass(equivalence::penalty_finite_difference_converges(Setup::EmbeddingOutput).unwrap());
    assert_pass(equivalence::penalty_finite_difference_converges(Setup::EmbeddingMatrix).unwrap());
}

#[test]
fn spectral_norm_checks_hold() {
    assert_pass(equivalence::spectral_norm_recovers_known_spectrum().unwrap());
    assert_pass(equivalence::spectral_norm_gradient_is_outer_product().unwrap());
    assert_pass(equivalence::lipschitz_bound_holds(1000).unwrap());
}

#[test]
fn a_wrong_identity_fails_its_check() {
    // The FGM step compared with a penalty of the wrong geometry must not pass: the checks can fail.
    let problem = advtrain::toy::problem(Setup::MlpInput, 7).unwrap();
    let steps = advtrain::verify::log_spaced(1e-4, 1e-1, 7);
    let errors: Vec<f64> = steps
        .iter()
        .map(|&eps| {
            let fgm = advtrain::Fgm::new(eps)
                .unwrap()
                .with_norm(StepNorm::Sign)
                .with_objective(advtrain::Objective::AdversarialOnly)
                .step(&problem.batch(), &mut Rng::new(0))
                .unwrap();
            let gp = advtrain::GradientPenalty::new(eps)
                .unwrap()
                .with_norm(StepNorm::Raw)
                .step(&problem.batch(), &mut Rng::new(0))
                .unwrap();
            let a = advtrain::verify::flat_gradient(&problem.vars, &fgm.grads).unwrap();
            let b = advtrain::verify::flat_gradient(&problem.vars, &gp.grads).unwrap();
            advtrain::verify::l2_norm(&(a - b).unwrap()).unwrap()
        })
        .collect();
    let fit = advtrain::verify::fit_order(&steps, &errors).unwrap();
    assert!(
        (fit.slope - 1.0).abs() < 0.15,
        "a mismatched pair differs at first order, slope {}",
        fit.slope
    );
}

#[test]
fn all_checks_pass_and_table_lists_them() {
    let checks = equivalence::all().unwrap();
    assert!(checks.len() >= 20);
    let table = equivalence::table(&checks);
    for c in &checks {
        assert!(c.pass, "{} failed: {}", c.identity, c.measured);
        assert!(table.contains(&c.identity));
    }
}
