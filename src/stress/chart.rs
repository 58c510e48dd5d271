//! `kiln stress --chart`: total time and throughput against the number of clients, one line per
//! model, drawn with plotters as SVG and PNG side by side. Text is set with a TrueType font read at
//! run time (DejaVu Sans, Debian's `fonts-dejavu-core`), so building needs no system font libraries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::StepRow;

/// Where the font is looked for, first found wins.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 520;

/// Writes the chart as SVG and PNG: `path` with its extension replaced by `.svg` and `.png`.
/// Returns the two files written.
///
/// # Errors
/// If there is nothing to draw, no font is found, or a file cannot be written.
pub fn write(path: &Path, steps: &[StepRow]) -> Result<(PathBuf, PathBuf)> {
    if steps.is_empty() {
        bail!("no steps to chart");
    }
    register_font()?;
    let svg = path.with_extension("svg");
    let png = path.with_extension("png");
    {
        let root = SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, steps).with_context(|| format!("cannot draw {}", svg.display()))?;
        root.present()
            .map_err(|error| anyhow!("cannot write {}: {error}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, steps).with_context(|| format!("cannot draw {}", png.display()))?;
        root.present()
            .map_err(|error| anyhow!("cannot write {}: {error}", png.display()))?;
    }
    Ok((svg, png))
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let Some((path, bytes)) = FONT_PATHS
                .iter()
                .find_map(|path| std::fs::read(path).ok().map(|bytes| (*path, bytes)))
            else {
                return Err(format!(
                    "no font for the chart: looked for {} (install Debian's fonts-dejavu-core)",
                    FONT_PATHS.join(", ")
                ));
            };
            // Registered once per process; plotters keeps a 'static reference.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font("sans-serif", style, bytes)
                    .map_err(|_| format!("{path} is not a font plotters can read"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(|message| anyhow!(message))
}

/// Per model, the points (clients, value).
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn series(steps: &[StepRow], value: impl Fn(&StepRow) -> f64) -> Series {
    let mut series = Series::new();
    for step in steps {
        series
            .entry(step.model.clone())
            .or_default()
            .push((step.clients as f64, value(step)));
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, steps: &[StepRow]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|error| anyhow!("{error}"))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let times = series(steps, |step| step.load.elapsed.as_secs_f64());
    let rates = series(steps, |step| step.load.throughput());
    panel(&left, "Total time", "seconds", &times)?;
    panel(
        &right,
        "Throughput",
        "successful requests per second",
        &rates,
    )?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    unit: &str,
    series: &Series,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = series.values().flatten();
    let (min_x, max_x) = points
        .clone()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
    let max_y = points.map(|(_, y)| *y).fold(0.0_f64, f64::max);
    let x_range = (min_x.max(1.0) * 0.8)..(max_x.max(min_x + 1.0) * 1.25);
    let y_range = 0.0..(max_y * 1.1).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.log_scale(), y_range)
        .map_err(|error| anyhow!("{error}"))?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc(unit)
        .x_labels(6)
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if max_y >= 100.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|error| anyhow!("{error}"))?;
    for (index, (model, points)) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|error| anyhow!("{error}"))?
            .label(model.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&point| Circle::new(point, 4, color.filled())),
            )
            .map_err(|error| anyhow!("{error}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|error| anyhow!("{error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stress::driver::LoadResult;

    #[test]
    fn writes_svg_and_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let steps: Vec<StepRow> = ["pool", "fork"]
            .iter()
            .flat_map(|model| {
                [100usize, 1000, 10_000].map(|clients| StepRow {
                    model: (*model).to_owned(),
                    clients,
                    concurrency: 64,
                    load: LoadResult {
                        ok: clients as u64,
                        elapsed: Duration::from_millis(clients as u64 / 10 + 5),
                        ..LoadResult::default()
                    },
                    server: None,
                })
            })
            .collect();
        let (svg, png) = write(&dir.path().join("chart.svg"), &steps).expect("chart");
        let svg_text = std::fs::read_to_string(&svg).expect("svg");
        assert!(svg_text.contains("<svg") && svg_text.contains("Throughput"));
        let png_bytes = std::fs::read(&png).expect("png");
        assert_eq!(&png_bytes[1..4], b"PNG");
    }
}
