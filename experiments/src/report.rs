//! Reports: the results table (one CSV row per run and epoch, written and read with polars), the
//! summary (final-epoch accuracy per method, mean +- standard deviation over seeds, and the difference
//! to the baseline with its standard error) and the figures. Book: "Experiments".

use super::rows::{EpochRow, file_error, write_rows};
use super::run::{Method, Options, Selection};
use advtrain::Result;

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// One line of the summary: a method at one radius.
#[derive(Clone, Debug)]
pub struct Summary {
    pub method: String,
    /// The radius; `None` for methods without one.
    pub eps: Option<f64>,
    /// The method, with its radius when the table holds several for it (`fgm eps=0.01`).
    pub label: String,
    pub seeds: usize,
    /// Mean and standard deviation over seeds of the final-epoch test accuracy.
    pub test: (f64, f64),
    /// Difference of means to the baseline and its standard error (sqrt(s1^2/n1 + s0^2/n0)).
    pub vs_baseline: Option<(f64, f64)>,
    pub fgsm: (f64, f64),
    pub pgd: (f64, f64),
    /// Accuracy under L2 PGD-10 at the training radius.
    pub pgd_l2: (f64, f64),
    /// The training radius of the group's runs (the L2 attack's radius), when they share one.
    pub attack_radius: Option<f64>,
    /// Mean seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Seeds whose final epoch predicts one class for every test example.
    pub collapsed: usize,
    /// The difference to the baseline paired by seed (same initial weights and data order), with
    /// a two-sided paired t-test; `None` for the baseline or with fewer than 2 shared seeds.
    pub paired: Option<Paired>,
}

/// Final-epoch test accuracy minus the baseline's, paired by seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// Mean and standard deviation of the per-seed differences.
    pub mean: f64,
    pub std: f64,
    pub seeds: usize,
    /// `mean / (std / sqrt(seeds))`, and its two-sided p-value with `seeds - 1` degrees of freedom;
    /// NaN when every seed's difference is the same (no spread to test against).
    pub t: f64,
    pub p: f64,
}

/// The paired t-test of `differences` (one per seed), or `None` for fewer than 2.
pub fn paired_t_test(differences: &[f64]) -> Option<Paired> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let n = differences.len();
    if n < 2 {
        return None;
    }
    let (mean, std) = mean_std(differences);
    let se = std / (n as f64).sqrt();
    let (t, p) = if se == 0.0 {
        // Every seed moved by the same amount: no spread to weigh it against, so no test.
        (f64::NAN, f64::NAN)
    } else {
        let t = mean / se;
        let distribution = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n >= 2 degrees");
        (t, 2.0 * (1.0 - distribution.cdf(t.abs())))
    };
    Some(Paired {
        mean,
        std,
        seeds: n,
        t,
        p,
    })
}

/// Whether `r` belongs to the summary line of `method` at radius `eps` (`None`: any radius).
fn in_group(r: &EpochRow, method: &str, eps: Option<f64>) -> bool {
    r.method == method && eps.is_none_or(|e| r.eps == e)
}

/// Summarises the final epoch of every run, per method and radius, in the order they first appear.
pub fn summarise(rows: &[EpochRow]) -> Vec<Summary> {
    let last = rows.iter().map(|r| r.epoch).max().unwrap_or(0);
    let uses_eps = |m: &str| Method::parse(m).map_or(true, Method::uses_eps);
    let mut groups: Vec<(&str, Option<f64>)> = Vec::new();
    for r in rows {
        let group = (r.method.as_str(), uses_eps(&r.method).then_some(r.eps));
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let in_group = |r: &EpochRow, (m, eps): (&str, Option<f64>)| in_group(r, m, eps);
    let finals = |g, get: fn(&EpochRow) -> f64| -> Vec<f64> {
        rows.iter()
            .filter(|r| in_group(r, g) && r.epoch == last)
            .map(get)
            .collect()
    };
    let baseline = finals(("baseline", None), |r| r.test_accuracy);
    groups
        .iter()
        .map(|&(m, eps)| {
            let test = finals((m, eps), |r| r.test_accuracy);
            let (mean, std) = mean_std(&test);
            let vs_baseline = (m != "baseline" && !baseline.is_empty()).then(|| {
                let (b_mean, b_std) = mean_std(&baseline);
                let se = (std.powi(2) / test.len() as f64 + b_std.powi(2) / baseline.len() as f64)
                    .sqrt();
                (mean - b_mean, se)
            });
            let epochs: Vec<f64> = rows
                .iter()
                .filter(|r| in_group(r, (m, eps)))
                .map(|r| r.seconds)
                .collect();
            let radii = groups.iter().filter(|g| g.0 == m).count();
            Summary {
                method: m.to_string(),
                eps,
                label: match eps {
                    Some(e) if radii > 1 => format!("{m} eps={e}"),
                    _ => m.to_string(),
                },
                seeds: test.len(),
                test: (mean, std),
                vs_baseline,
                fgsm: mean_std(&finals((m, eps), |r| r.fgsm_accuracy)),
                pgd: mean_std(&finals((m, eps), |r| r.pgd_accuracy)),
                pgd_l2: mean_std(&finals((m, eps), |r| r.pgd_l2_accuracy)),
                attack_radius: {
                    let radii = finals((m, eps), |r| r.eps);
                    radii
                        .first()
                        .copied()
                        .filter(|first| radii.iter().all(|r| r == first))
                },
                seconds_per_epoch: mean_std(&epochs).0,
                paired: (m != "baseline")
                    .then(|| {
                        let differences: Vec<f64> = rows
                            .iter()
                            .filter(|r| in_group(r, (m, eps)) && r.epoch == last)
                            .filter_map(|r| {
                                rows.iter()
                                    .find(|b| {
                                        in_group(b, ("baseline", None))
                                            && b.epoch == last
                                            && b.seed == r.seed
                                    })
                                    .map(|b| r.test_accuracy - b.test_accuracy)
                            })
                            .collect();
                        paired_t_test(&differences)
                    })
                    .flatten(),
                collapsed: rows
                    .iter()
                    .filter(|r| in_group(r, (m, eps)) && r.epoch == last && r.collapsed())
                    .count(),
            }
        })
        .collect()
}

/// A percentage with its spread: `mean ± spread`, or the mean alone when `seeds` < 2 (one run has no
/// spread to show).
fn pct((mean, spread): (f64, f64), seeds: usize, sign: bool) -> String {
    if mean.is_nan() {
        return "-".into();
    }
    let value = if sign {
        format!("{:+.2}", 100.0 * mean)
    } else {
        format!("{:.2}", 100.0 * mean)
    };
    if seeds < 2 {
        value
    } else {
        format!("{value} ± {:.2}", 100.0 * spread)
    }
}

/// A p-value to three decimals, or `p < 0.001` where those would read 0.000.
pub fn p_value(p: f64) -> String {
    if p < 0.0005 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// The summary as a Markdown table (accuracies in percent).
pub fn markdown(summary: &[Summary], robust: bool) -> String {
    let mut out =
        String::from("| method | seeds | test accuracy | vs baseline | paired by seed (t, p) |");
    out += if robust {
        " FGSM accuracy | PGD-10 accuracy | L2 PGD-10 accuracy | s / epoch |\n|---|---|---|---|---|---|---|---|---|\n"
    } else {
        " s / epoch |\n|---|---|---|---|---|---|\n"
    };
    let baseline_seeds = summary
        .iter()
        .find(|s| s.method == "baseline")
        .map_or(0, |s| s.seeds);
    // Each run is attacked in the L2 ball of its own training radius: where the rows trained at
    // different radii (`--eps auto`, a sweep), each L2 cell names its radius.
    let mut radii: Vec<f64> = summary.iter().filter_map(|s| s.attack_radius).collect();
    radii.dedup();
    let name_radius = radii.len() > 1;
    for s in summary {
        let n = s.seeds;
        let vs = s
            .vs_baseline
            .map_or("-".into(), |d| pct(d, n.min(baseline_seeds), true));
        let label = if s.collapsed > 0 {
            format!("{} (collapsed: {} of {n})", s.label, s.collapsed)
        } else {
            s.label.clone()
        };
        let paired = s.paired.map_or("-".into(), |d| {
            let test = if d.t.is_nan() {
                "every seed the same: no test".to_string()
            } else {
                format!("t = {:.2}, {}", d.t, p_value(d.p))
            };
            format!("{:+.2} ± {:.2} ({test})", 100.0 * d.mean, 100.0 * d.std)
        });
        out += &format!(
            "| {label} | {n} | {} | {vs} | {paired} |",
            pct(s.test, n, false)
        );
        if robust {
            out += &format!(
                " {} | {} | {} |",
                pct(s.fgsm, n, false),
                pct(s.pgd, n, false),
                match (name_radius, s.attack_radius) {
                    (true, Some(r)) if !s.pgd_l2.0.is_nan() =>
                        format!("{} (radius {r})", pct(s.pgd_l2, n, false)),
                    _ => pct(s.pgd_l2, n, false),
                }
            );
        }
        out += &format!(" {:.1} |\n", s.seconds_per_epoch);
    }
    out
}

/// One radius tried by `--eps auto`: its mean and standard deviation of the final-epoch dev accuracy
/// over the selection seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tried {
    pub eps: f64,
    pub dev: (f64, f64),
    pub seeds: usize,
    /// How many of the selection seeds collapsed at this radius ([`EpochRow::collapsed`]).
    pub collapsed: usize,
}

/// `--eps auto`'s choice for `method` from its selection rows: the radius with the best mean
/// final-epoch dev accuracy (a tie goes to the smaller radius), and every radius tried, smallest
/// first. `None` when `rows` holds no run of `method`.
pub fn select_radius(rows: &[EpochRow], method: &str) -> Option<(f64, Vec<Tried>)> {
    let mine: Vec<&EpochRow> = rows.iter().filter(|r| r.method == method).collect();
    let last = mine.iter().map(|r| r.epoch).max()?;
    let mut radii: Vec<f64> = mine.iter().map(|r| r.eps).collect();
    radii.sort_by(f64::total_cmp);
    radii.dedup();
    let tried: Vec<Tried> = radii
        .iter()
        .map(|&eps| {
            let finals: Vec<&EpochRow> = mine
                .iter()
                .copied()
                .filter(|r| r.eps == eps && r.epoch == last)
                .collect();
            let dev: Vec<f64> = finals.iter().map(|r| r.dev_accuracy).collect();
            Tried {
                eps,
                dev: mean_std(&dev),
                seeds: dev.len(),
                collapsed: finals.iter().filter(|r| r.collapsed()).count(),
            }
        })
        .collect();
    let best = tried.iter().fold(None::<&Tried>, |best, t| match best {
        Some(b) if b.dev.0 >= t.dev.0 => Some(b),
        _ => Some(t),
    })?;
    Some((best.eps, tried))
}

/// Writes `--eps auto`'s selection runs (selection.csv) and its choices (selection.md) under
/// `options.out_dir`, and returns the chosen radius of each method that has one.
pub fn write_selection(
    options: &Options,
    selection: &Selection,
    rows: &[EpochRow],
) -> Result<Vec<(Method, f64)>> {
    let out = &options.out_dir;
    write_rows(&out.join("selection.csv"), rows)?;
    let mut text = format!(
        "`--eps auto`: final-epoch dev accuracy (%), mean ± standard deviation over the selection \
         seeds {}-{}, which the reported comparison (summary.md) leaves out. Each method runs at \
         the radius marked chosen.\n\n| method | eps | seeds | dev accuracy | |\n|---|---|---|---|---|\n",
        super::run::SELECTION_SEED_BASE + 1,
        super::run::SELECTION_SEED_BASE + selection.seeds as u64,
    );
    let mut chosen = Vec::new();
    for &method in options.methods.iter().filter(|m| m.uses_eps()) {
        let Some((eps, tried)) = select_radius(rows, method.name()) else {
            continue;
        };
        for t in tried {
            text += &format!(
                "| {} | {} | {} | {} | {} |\n",
                method.name(),
                t.eps,
                t.seeds,
                pct(t.dev, t.seeds, false),
                match (t.eps == eps, t.collapsed) {
                    (true, 0) => "chosen".to_string(),
                    (true, k) => format!("chosen (collapsed: {k} of {})", t.seeds),
                    (false, 0) => String::new(),
                    (false, k) => format!("collapsed: {k} of {}", t.seeds),
                }
            );
        }
        chosen.push((method, eps));
    }
    let path = out.join("selection.md");
    std::fs::write(&path, text).map_err(|e| file_error(&path, e))?;
    Ok(chosen)
}

/// Writes results.csv, summary.md (with `note` after its first paragraph) and the figures (learning
/// curves, final accuracy per method, and accuracy against eps where the table holds a sweep) under
/// `options.out_dir`.
pub fn write_all(options: &Options, rows: &[EpochRow], note: Option<&str>) -> Result<()> {
    let out = &options.out_dir;
    write_rows(&out.join("results.csv"), rows)?;
    let summary = summarise(rows);
    let robust = summary.iter().any(|s| !s.fgsm.0.is_nan());
    let name = options.experiment.name();
    let command = format!(
        "cargo run --release -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let threat = if robust {
        " Under attack, the pixels are kept in [0, 1]: FGSM and PGD-10 (steps of eps/4) in the \
         L-infinity ball of the attack radius, and PGD-10 in each image's L2 ball of the training \
         radius, the threat model the methods trained against."
    } else {
        ""
    };
    let text = format!(
        "Final-epoch test accuracy (%), mean ± standard deviation over seeds; the difference to the \
         baseline ± its standard error; the difference paired by seed (same initial weights and \
         data order) ± its standard deviation, with a two-sided paired t-test.{threat} Produced by `{command}`.\n\n{}{}",
        note.map_or(String::new(), |n| format!("{n}\n\n")),
        markdown(&summary, robust)
    );
    let write = |file: &str, contents: &str| -> Result<()> {
        let path = out.join(file);
        std::fs::write(&path, contents).map_err(|e| file_error(&path, e))
    };
    write("summary.md", &format!("{text}{}", collapsed_note(&summary)))?;
    let last = rows.iter().map(|r| r.epoch).max().unwrap_or(0);
    let curves: Vec<(&str, Vec<(f64, f64)>)> = summary
        .iter()
        .map(|s| {
            let points = (1..=last)
                .map(|e| {
                    let dev: Vec<f64> = rows
                        .iter()
                        .filter(|r| {
                            r.method == s.method && s.eps.is_none_or(|x| r.eps == x) && r.epoch == e
                        })
                        .map(|r| 100.0 * r.dev_accuracy)
                        .collect();
                    (e as f64, mean_std(&dev).0)
                })
                .collect();
            (s.label.as_str(), points)
        })
        .collect();
    let figure = advtrain_plots::lines(
        &format!("{name}: dev accuracy by epoch (mean over seeds)"),
        "epoch",
        "dev accuracy (%)",
        &curves,
    );
    write("learning_curves.svg", figure.svg())?;
    let labels: Vec<&str> = summary.iter().map(|s| s.label.as_str()).collect();
    let values: Vec<f64> = summary.iter().map(|s| 100.0 * s.test.0).collect();
    let figure = advtrain_plots::bars(
        &format!("{name}: test accuracy"),
        "accuracy (%)",
        &labels,
        &values,
    );
    write("test_accuracy.svg", figure.svg())?;
    if robust {
        let values: Vec<f64> = summary.iter().map(|s| 100.0 * s.pgd.0).collect();
        let figure = advtrain_plots::bars(
            &format!("{name}: accuracy under PGD-10"),
            "accuracy (%)",
            &labels,
            &values,
        );
        write("pgd_accuracy.svg", figure.svg())?;
    }
    if let Some(figure) = accuracy_against_eps(name, &summary) {
        write("accuracy_vs_eps.svg", figure.svg())?;
    }
    Ok(())
}

/// The summary's closing paragraph on collapsed runs (empty without any).
fn collapsed_note(summary: &[Summary]) -> String {
    let collapsed: Vec<String> = summary
        .iter()
        .filter(|s| s.collapsed > 0)
        .map(|s| format!("{} ({} of {} seeds)", s.label, s.collapsed, s.seeds))
        .collect();
    if collapsed.is_empty() {
        return String::new();
    }
    format!(
        "\nCollapsed runs, which predict one class for every test example or end with the training \
         loss at chance level (at least {:.0}% of ln C): {}. Their accuracy is a guess's, not a \
         comparison of methods.\n",
        100.0 * super::rows::CHANCE_LOSS_FRACTION,
        collapsed.join(", ")
    )
}

/// The sentence `rewrite_summary` adds under the text it keeps.
const REWRITTEN: &str = "Table written again from results.csv by `advtrain summarise`";

/// Writes `dir/summary.md` again from `dir/results.csv` with the current table (the difference
/// paired by seed and its t-test included), keeping the text above the old table (what was run,
/// and how) and noting the rewrite; returns the new summary. For results written before the table
/// had a column; the figures are left as they are.
pub fn rewrite_summary(dir: &std::path::Path) -> Result<String> {
    let results = dir.join("results.csv");
    if !results.is_file() {
        return Err(advtrain::Error::data(
            results.display(),
            None,
            "no such file",
            "pass the folder an experiment wrote (it holds results.csv and summary.md)",
        ));
    }
    let rows = super::rows::read_rows(&results)?;
    if rows.is_empty() {
        return Err(advtrain::Error::data(
            results.display(),
            None,
            "no rows",
            "pass the folder of a run that finished at least one epoch",
        ));
    }
    let summary = summarise(&rows);
    let robust = summary.iter().any(|s| !s.fgsm.0.is_nan());
    let old = std::fs::read_to_string(dir.join("summary.md")).unwrap_or_default();
    let kept: Vec<&str> = old.lines().take_while(|l| !l.starts_with('|')).collect();
    let kept = kept.join("\n");
    let kept = kept.trim_end();
    let head = match (kept.is_empty(), kept.contains(REWRITTEN)) {
        (true, _) => format!("Final-epoch test accuracy (%) from {}.", results.display()),
        (false, true) => kept.to_string(),
        (false, false) => format!(
            "{kept}\n\n{REWRITTEN}: the difference paired by seed (same initial weights and data \
             order) ± its standard deviation, with a two-sided paired t-test."
        ),
    };
    let text = format!(
        "{head}\n\n{}{}",
        markdown(&summary, robust),
        collapsed_note(&summary)
    );
    let path = dir.join("summary.md");
    std::fs::write(&path, &text).map_err(|e| file_error(&path, e))?;
    Ok(text)
}

/// Mean test accuracy against log10(eps), a line per method run at two radii or more, with the
/// baseline as a flat line; `None` when no method was.
fn accuracy_against_eps(name: &str, summary: &[Summary]) -> Option<advtrain_plots::Figure> {
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for s in summary {
        let Some(eps) = s.eps else { continue };
        let point = (eps.log10(), 100.0 * s.test.0);
        match series.iter_mut().find(|(m, _)| *m == s.method) {
            Some((_, points)) => points.push(point),
            None => series.push((s.method.as_str(), vec![point])),
        }
    }
    series.retain(|(_, points)| points.len() > 1);
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if series.is_empty() {
        return None;
    }
    if let Some(b) = summary.iter().find(|s| s.method == "baseline") {
        series.push((
            "baseline",
            vec![(lo, 100.0 * b.test.0), (hi, 100.0 * b.test.0)],
        ));
    }
    Some(advtrain_plots::lines(
        &format!("{name}: test accuracy against the radius (mean over seeds)"),
        "log10 eps",
        "test accuracy (%)",
        &series,
    ))
}
