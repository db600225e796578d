//! One SVG per label (plotters, SVG backend): the precision/recall curve with the thresholds
//! before and after, and the score histograms of positives and negatives with both thresholds.

use std::path::Path;

use plotters::prelude::*;

use clipfilter::calibrate::{self, LabelScores, PrPoint, Target};

const AFTER: RGBColor = RGBColor(214, 39, 40);
const BEFORE: RGBColor = RGBColor(120, 120, 120);
const POSITIVE: RGBColor = RGBColor(31, 119, 180);
const NEGATIVE: RGBColor = RGBColor(255, 127, 14);

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Draws the plot of one label into `path`.
pub fn draw(
    path: &Path,
    label: &str,
    score: &str,
    scores: &LabelScores,
    before: &PrPoint,
    after: Option<&PrPoint>,
    target: Target,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = match after {
        Some(a) => format!(
            "{label}: {score} threshold {:.4} -> {:.4} ({target})",
            before.threshold, a.threshold
        ),
        None => format!(
            "{label}: {score} threshold {:.4} (not calibrated)",
            before.threshold
        ),
    };
    let root = root.titled(&title, ("sans-serif", 20)).map_err(err)?;
    let (left, right) = root.split_horizontally(440);

    // Precision/recall curve.
    let curve = calibrate::pr_curve(&scores.positives, &scores.negatives);
    let mut chart = ChartBuilder::on(&left)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .caption("precision / recall", ("sans-serif", 15))
        .build_cartesian_2d(0f64..1.02f64, 0f64..1.02f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("recall")
        .y_desc("precision")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            curve.iter().map(|p| (p.recall, p.precision)),
            POSITIVE.stroke_width(2),
        ))
        .map_err(err)?;
    if let Target::Precision(p) = target {
        chart
            .draw_series(LineSeries::new(
                [(0.0, f64::from(p)), (1.02, f64::from(p))],
                AFTER.mix(0.4),
            ))
            .map_err(err)?;
    }
    let mut marks = vec![(before, BEFORE, "before")];
    if let Some(a) = after {
        marks.push((a, AFTER, "after"));
    }
    for &(p, colour, name) in &marks {
        chart
            .draw_series([Circle::new((p.recall, p.precision), 6, colour.filled())])
            .map_err(err)?
            .label(format!("{name} {}", super::describe_point(p)))
            .legend(move |(x, y)| Circle::new((x, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;

    // Score histograms.
    let all = scores.positives.iter().chain(&scores.negatives);
    let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
        (lo.min(*s), hi.max(*s))
    });
    let lo = lo
        .min(before.threshold)
        .min(after.map_or(lo, |a| a.threshold));
    let hi = hi
        .max(before.threshold)
        .max(after.map_or(hi, |a| a.threshold));
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let span = (hi - lo).max(1e-6);
    const BINS: usize = 25;
    let width = span / BINS as f64;
    let count = |v: &[f32]| {
        let mut c = [0usize; BINS];
        for s in v {
            let b = ((f64::from(*s) - lo) / width).floor() as isize;
            c[b.clamp(0, BINS as isize - 1) as usize] += 1;
        }
        c
    };
    let (pos, neg) = (count(&scores.positives), count(&scores.negatives));
    let top = pos.iter().chain(&neg).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut hist = ChartBuilder::on(&right)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .caption(
            format!(
                "{score} of {} positives and {} negatives",
                scores.positives.len(),
                scores.negatives.len()
            ),
            ("sans-serif", 15),
        )
        .build_cartesian_2d(lo - width..hi + width, 0f64..top)
        .map_err(err)?;
    hist.configure_mesh()
        .x_desc(score)
        .y_desc("examples")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (counts, colour, name) in [(&neg, NEGATIVE, "negatives"), (&pos, POSITIVE, "positives")] {
        hist.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + width, *c as f64)],
                        colour.mix(0.5).filled(),
                    )
                }),
        )
        .map_err(err)?
        .label(name)
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.mix(0.5).filled())
        });
    }
    for &(p, colour, name) in &marks {
        let t = f64::from(p.threshold);
        hist.draw_series(LineSeries::new(
            [(t, 0.0), (t, top)],
            colour.stroke_width(2),
        ))
        .map_err(err)?
        .label(format!("{name} {:.4}", p.threshold))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], colour.stroke_width(2)));
    }
    hist.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
