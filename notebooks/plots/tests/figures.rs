//! Every kind of figure draws a complete SVG with its title.

#[test]
fn each_figure_kind_draws_an_svg() {
    let series = vec![("error", vec![(1e-3, 1e-6), (1e-2, 1e-4), (1e-1, 1e-2)])];
    let figures = [
        advtrain_plots::loglog("order two", "eps", "error", &series, Some(2.0)),
        advtrain_plots::lines("a line", "x", "y", &[("a", vec![(0.0, 1.0), (1.0, 2.0)])]),
        advtrain_plots::heatmap(
            "a map",
            (0.0, 1.0, 0.0, 1.0),
            &[vec![0.0, 1.0], vec![2.0, 3.0]],
            &[(0.5, 0.5)],
        ),
        advtrain_plots::bars("some bars", "passes", &["a", "b"], &[2.0, 4.0]),
    ];
    for (figure, title) in figures
        .iter()
        .zip(["order two", "a line", "a map", "some bars"])
    {
        let svg = figure.svg();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{title}"
        );
        assert!(svg.contains(title), "{title} missing from its SVG");
    }
}
