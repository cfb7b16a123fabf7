//! `mlstack train plot`: the loss curves (train and validation) and
//! tokens/s of a run's `metrics.jsonl`, as a PNG (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::metrics::StepRecord;

/// The font plotters draws labels with (Debian's `fonts-dejavu-core`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn perr(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

/// Draws `records` into `out` (800×600 PNG): loss above, tokens/s below.
pub fn plot(records: &[StepRecord], title: &str, out: &Path) -> Result<()> {
    if records.is_empty() {
        return Err(TrainError::Plot("no steps in metrics.jsonl".into()));
    }
    let font = std::fs::read(FONT).map_err(|e| {
        TrainError::Plot(format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))
    })?;
    // register_font wants 'static bytes; one font per process is fine.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| TrainError::Plot("registering the font failed".into()))?;
    let root = BitMapBackend::new(out, (800, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let (top, bottom) = root.split_vertically(400);
    let max_step = records.iter().map(|r| r.step).max().unwrap_or(1) as f64;
    let losses: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (r.step as f64, f64::from(r.loss)))
        .collect();
    let vals: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.step as f64, f64::from(v))))
        .collect();
    let (lo, hi) = losses
        .iter()
        .chain(&vals)
        .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, y)| {
            (lo.min(y), hi.max(y))
        });
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{title}: loss"), ("sans-serif", 22))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, (lo * 0.95)..(hi * 1.05))
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .draw()
        .map_err(perr)?;
    chart
        .draw_series(LineSeries::new(losses, &BLUE))
        .map_err(perr)?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !vals.is_empty() {
        chart
            .draw_series(LineSeries::new(vals.clone(), RED.stroke_width(2)))
            .map_err(perr)?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(vals.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(perr)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(perr)?;
    let tps: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (r.step as f64, r.tokens_per_sec))
        .collect();
    let tmax = tps.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let mut c2 = ChartBuilder::on(&bottom)
        .caption("tokens/s", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, 0.0..tmax * 1.1)
        .map_err(perr)?;
    c2.configure_mesh().x_desc("step").draw().map_err(perr)?;
    c2.draw_series(LineSeries::new(tps, &GREEN)).map_err(perr)?;
    root.present().map_err(perr)?;
    Ok(())
}
