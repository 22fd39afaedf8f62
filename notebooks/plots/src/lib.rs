//! Figures for advtrain's notebooks and book, drawn with plotters into SVG strings.
//!
//! A [`Figure`] shows itself in an evcxr notebook as an `image/svg+xml` output, and [`Figure::save`]
//! writes it for the book. One function per kind of figure: [`loglog`] (an error against a step size,
//! with a reference slope), [`lines`], [`heatmap`] (a function over a 2-D grid, with points) and
//! [`bars`].

use plotters::coord::Shift;
use plotters::prelude::*;

/// An SVG figure.
pub struct Figure {
    svg: String,
}

impl Figure {
    /// The SVG text.
    pub fn svg(&self) -> &str {
        &self.svg
    }

    /// Writes the SVG to `path`.
    pub fn save(&self, path: &str) -> std::io::Result<()> {
        std::fs::write(path, &self.svg)
    }

    /// evcxr's display hook: an `image/svg+xml` output.
    pub fn evcxr_display(&self) {
        println!(
            "EVCXR_BEGIN_CONTENT image/svg+xml\n{}\nEVCXR_END_CONTENT",
            self.svg
        );
    }
}

/// A named series of (x, y) points.
pub type Series<'a> = (&'a str, Vec<(f64, f64)>);

const SIZE: (u32, u32) = (640, 420);

fn draw(
    f: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), Box<dyn std::error::Error>>,
) -> Figure {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        if let Err(e) = f(&root) {
            panic!("drawing failed: {e}");
        }
        root.present().expect("present");
    }
    Figure { svg }
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let points = series.iter().flat_map(|s| s.1.iter());
    points.fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(x0, x1, y0, y1), &(x, y)| (x0.min(x), x1.max(x), y0.min(y), y1.max(y)),
    )
}

/// Draws each named series as a line (with point markers if `markers`) and registers its legend entry.
fn draw_series<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    series: &[Series],
    markers: bool,
) -> Result<(), Box<dyn std::error::Error>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        if markers {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    Ok(())
}

/// Log-log plot of each series, and a dashed reference line of slope `reference`, drawn a factor 5
/// below the lowest point so that it does not hide a series of the same slope.
pub fn loglog(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<f64>,
) -> Figure {
    let (x0, x1, y0, y1) = bounds(series);
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x0 * 0.8..x1 * 1.25).log_scale(),
                (y0 * 0.1..y1 * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()?;
        draw_series(&mut chart, series, true)?;
        if let Some(slope) = reference {
            // Through (x0, y0 / 5), or through (x1, y0 / 5) for a negative slope.
            let (xa, ya) = (if slope >= 0.0 { x0 } else { x1 }, y0 / 5.0);
            let line: Vec<(f64, f64)> = [x0, x1]
                .iter()
                .map(|&x| (x, ya * (x / xa).powf(slope)))
                .collect();
            let gray = BLACK.mix(0.5);
            chart
                .draw_series(DashedLineSeries::new(line, 6, 4, gray.stroke_width(1)))?
                .label(format!("slope {slope}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], gray));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Line plot of each series on linear axes.
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Figure {
    let (x0, x1, y0, y1) = bounds(series);
    let pad = (y1 - y0).abs().max(1e-12) * 0.08;
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        draw_series(&mut chart, series, false)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// A function sampled on a regular grid over `[x0, x1] x [y0, y1]` (`values[row][col]`, rows along y),
/// drawn as a heat map (dark = low), with points on top.
pub fn heatmap(
    title: &str,
    extent: (f64, f64, f64, f64),
    values: &[Vec<f64>],
    points: &[(f64, f64)],
) -> Figure {
    let (x0, x1, y0, y1) = extent;
    let (rows, cols) = (values.len(), values.first().map_or(0, |r| r.len()));
    let (lo, hi) = values
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart.configure_mesh().disable_mesh().draw()?;
        let (dx, dy) = ((x1 - x0) / cols as f64, (y1 - y0) / rows as f64);
        chart.draw_series(values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, v)| {
                let t = ((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0);
                let shade = (40.0 + 215.0 * t) as u8;
                let (x, y) = (x0 + c as f64 * dx, y0 + r as f64 * dy);
                Rectangle::new(
                    [(x, y), (x + dx, y + dy)],
                    RGBColor(shade, shade, 255).filled(),
                )
            })
        }))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        Ok(())
    })
}

/// A bar chart of `values` with `labels`.
pub fn bars(title: &str, y_label: &str, labels: &[&str], values: &[f64]) -> Figure {
    let top = values.iter().cloned().fold(0.0f64, f64::max) * 1.15;
    let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..labels.len() as f64, 0f64..top.max(1e-12))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()?;
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                Palette99::pick(i).filled(),
            )
        }))?;
        Ok(())
    })
}
