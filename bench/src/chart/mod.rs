//! Charts of a run over time, as PNG files.
//!
//! A [`Chart`] is data only: series of one value per second on a left or a right axis, and
//! [`Event`]s (a scale, a rollout step) drawn as labelled vertical lines. [`load_chart`] makes
//! the standard chart of a load run from its [`Report::timeline`]; [`render`] draws any chart
//! into an RGB buffer with `plotters` and encodes it with `png`; [`write`] writes the PNG and,
//! beside it, the chart itself as JSON ([`data_path`]): exactly the plotted series, so the
//! numbers behind the picture can be read back (and tested) without decoding pixels.
//!
//! Text is drawn with `ab_glyph` from a TrueType file read at run time (no fontconfig or
//! freetype): [`FONT_PATH`] from the Debian package `fonts-dejavu-core`, or the file named by
//! the `SLUICE_CHART_FONT` environment variable.
//!
//! [`Report::timeline`]: crate::load::Report::timeline

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::Second;

mod bars;
mod canvas;

pub use bars::{BarChart, BarSeries, render_bars, write_bars};
use canvas::FAMILY;

/// The font text is drawn with, unless `SLUICE_CHART_FONT` names another.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The Debian package that holds [`FONT_PATH`].
pub const FONT_PACKAGE: &str = "fonts-dejavu-core";

/// The default picture size, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1280, 720);

/// What to draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    pub title: String,
    /// Label of the left axis.
    pub left_axis: String,
    /// Label of the right axis (drawn when a series uses it).
    pub right_axis: String,
    /// Value `i` of every series is second `i` of the run (drawn at its middle, `i + 0.5`).
    pub series: Vec<Series>,
    /// Marked moments, in seconds since the start.
    pub events: Vec<Event>,
}

impl Chart {
    /// The values of the series called `name`.
    pub fn values(&self, name: &str) -> Option<&[f64]> {
        self.series
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.values[..])
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend text.
    pub name: String,
    pub axis: Axis,
    /// Line colour, RGB.
    pub color: [u8; 3],
    /// One value per second.
    pub values: Vec<f64>,
}

/// The axis a series is read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    Left,
    Right,
}

/// A marked moment: a vertical line with a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the start of the run.
    pub t: f64,
    pub label: String,
}

/// Colours of the standard series.
pub mod colors {
    pub const BLUE: [u8; 3] = [31, 119, 180];
    pub const GREEN: [u8; 3] = [44, 160, 44];
    pub const PURPLE: [u8; 3] = [148, 103, 189];
    pub const BROWN: [u8; 3] = [140, 86, 75];
    pub const ORANGE: [u8; 3] = [255, 127, 14];
    pub const RED: [u8; 3] = [214, 39, 40];
    pub const GREY: [u8; 3] = [127, 127, 127];
    /// For series of their own kind (versions, responders), in turn.
    pub const CYCLE: [[u8; 3]; 4] = [BLUE, GREEN, PURPLE, BROWN];
}

/// Why a chart could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(
        "cannot read the chart font {path}: {source} (install the Debian package \
         {FONT_PACKAGE}, or set SLUICE_CHART_FONT to a TrueType font file)"
    )]
    FontMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a TrueType or OpenType font")]
    InvalidFont { path: PathBuf },
    #[error("the picture must be at least 200 x 150 pixels, not {0} x {1}")]
    TooSmall(u32, u32),
    #[error("cannot draw the chart: {0}")]
    Draw(String),
    #[error("cannot encode the PNG: {0}")]
    Encode(#[from] png::EncodingError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the events file {path}: {source}")]
    ReadEvents {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the events file {path} is not a JSON list of {{\"t\": seconds, \"label\": text}}: \
         {source}"
    )]
    ParseEvents {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The standard chart of a load run: requests sent per second and failures per second on the
/// left, the p99 latency of each second (milliseconds) on the right.
pub fn load_chart(title: impl Into<String>, timeline: &[Second], events: Vec<Event>) -> Chart {
    let per_second = |f: &dyn Fn(&Second) -> f64| timeline.iter().map(f).collect::<Vec<_>>();
    Chart {
        title: title.into(),
        left_axis: "requests/s".into(),
        right_axis: "p99 latency (ms)".into(),
        series: vec![
            Series {
                name: "sent/s".into(),
                axis: Axis::Left,
                color: colors::BLUE,
                values: per_second(&|s| s.sent as f64),
            },
            Series {
                name: "failures/s".into(),
                axis: Axis::Left,
                color: colors::RED,
                values: per_second(&|s| s.failures() as f64),
            },
            Series {
                name: "p99 (ms)".into(),
                axis: Axis::Right,
                color: colors::ORANGE,
                values: per_second(&|s| s.p99_us as f64 / 1000.0),
            },
        ],
        events,
    }
}

/// Reads an events file: a JSON list of `{"t": seconds since the start, "label": text}`.
pub fn read_events(path: &Path) -> Result<Vec<Event>, ChartError> {
    let text = std::fs::read_to_string(path).map_err(|source| ChartError::ReadEvents {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ChartError::ParseEvents {
        path: path.to_owned(),
        source,
    })
}

/// Where [`write`] puts the chart's data: the PNG's path with `.json` for its extension.
pub fn data_path(png: &Path) -> PathBuf {
    png.with_extension("json")
}

/// Writes the chart as a PNG of `size` pixels at `png` and its data beside it
/// ([`data_path`]), creating the directory. Returns the data file's path.
pub fn write(chart: &Chart, png: &Path, size: (u32, u32)) -> Result<PathBuf, ChartError> {
    canvas::write_with_data(png, &render(chart, size)?, chart)
}

/// Draws the chart: a PNG of `size` pixels (width, height).
pub fn render(chart: &Chart, size: (u32, u32)) -> Result<Vec<u8>, ChartError> {
    canvas::render_png(size, |rgb| draw(chart, rgb, size))
}

pub(crate) fn color_of([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

/// Room above the highest value, for the event labels.
const HEADROOM: f64 = 1.3;
/// Height of the title and legend above the plot, in pixels.
const HEADER: u32 = 64;
/// Height of one row of event labels, in pixels.
const LABEL_ROW: i32 = 17;

fn axis_max(chart: &Chart, axis: Axis) -> f64 {
    let max = chart
        .series
        .iter()
        .filter(|s| s.axis == axis)
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max > 0.0 { max * HEADROOM } else { 1.0 }
}

/// Places labels of the given pixel widths at the given x positions (in time order) in rows,
/// each in the first row where it does not overlap the previous label, or, when all `rows`
/// are taken there, in the row that ends first. Returns each label's row.
fn label_rows(placed: &[(i32, i32)], rows: usize) -> Vec<usize> {
    let rows = rows.max(1);
    let mut ends = vec![i32::MIN; rows];
    placed
        .iter()
        .map(|&(x, width)| {
            let row = ends
                .iter()
                .position(|&end| end + 6 <= x)
                .unwrap_or_else(|| (0..rows).min_by_key(|&r| ends[r]).unwrap_or(0));
            ends[row] = x + width;
            row
        })
        .collect()
}

fn draw(chart: &Chart, rgb: &mut [u8], size: (u32, u32)) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(rgb, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);
    let grey = color_of(colors::GREY);

    // The title, and the legend as one line under it.
    canvas::draw_title(&header, &chart.title, size.0)?;
    let legend_font = (FAMILY, 14).into_font().color(&BLACK);
    let mut x = 70;
    for series in &chart.series {
        let color = color_of(series.color);
        header.draw(&PathElement::new(
            [(x, 46), (x + 24, 46)],
            color.stroke_width(3),
        ))?;
        header.draw_text(&series.name, &legend_font, (x + 30, 39))?;
        let (w, _) = header.estimate_text_size(&series.name, &legend_font)?;
        x += 30 + w as i32 + 28;
    }

    let seconds = chart
        .series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0);
    let last_event = chart.events.iter().map(|e| e.t).fold(0.0, f64::max);
    let x_max = (seconds as f64).max(last_event.ceil()).max(1.0);
    let (left_max, right_max) = (axis_max(chart, Axis::Left), axis_max(chart, Axis::Right));
    let has_right = chart.series.iter().any(|s| s.axis == Axis::Right);

    let mut ctx = ChartBuilder::on(&body)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(if has_right { 60 } else { 12 })
        .build_cartesian_2d(0.0..x_max, 0.0..left_max)?
        .set_secondary_coord(0.0..x_max, 0.0..right_max);
    ctx.configure_mesh()
        .x_desc("seconds")
        .y_desc(chart.left_axis.as_str())
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    if has_right {
        ctx.configure_secondary_axes()
            .y_desc(chart.right_axis.as_str())
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
    }

    // Events: dashed lines, labels in rows across the headroom (in root pixels).
    let label_font = (FAMILY, 13).into_font().color(&BLACK);
    let (top_left, bottom_right) = (
        ctx.backend_coord(&(0.0, left_max)),
        ctx.backend_coord(&(x_max, 0.0)),
    );
    let headroom_px = f64::from(bottom_right.1 - top_left.1) * (1.0 - 1.0 / HEADROOM);
    let rows = (headroom_px / f64::from(LABEL_ROW)) as usize;
    let mut events: Vec<&Event> = chart.events.iter().collect();
    events.sort_by(|a, b| a.t.total_cmp(&b.t));
    let mut placed = Vec::with_capacity(events.len());
    for event in &events {
        let (w, _) = root.estimate_text_size(&event.label, &label_font)?;
        let w = w as i32;
        let line_x = ctx.backend_coord(&(event.t, 0.0)).0;
        // Right of its line, or left of it where the plot ends.
        let x = if line_x + 3 + w <= bottom_right.0 {
            line_x + 3
        } else {
            (line_x - 3 - w).max(top_left.0)
        };
        placed.push((x, w));
    }
    for ((event, &(x, _)), row) in events.iter().zip(&placed).zip(label_rows(&placed, rows)) {
        ctx.draw_series(DashedLineSeries::new(
            [(event.t, 0.0), (event.t, left_max)],
            6,
            4,
            grey.stroke_width(1),
        ))?;
        let y = top_left.1 + 3 + LABEL_ROW * row as i32;
        root.draw_text(&event.label, &label_font, (x, y))?;
    }

    for series in &chart.series {
        let points = series
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64 + 0.5, v));
        let style = color_of(series.color).stroke_width(2);
        match series.axis {
            Axis::Left => ctx.draw_series(LineSeries::new(points, style))?,
            Axis::Right => ctx.draw_secondary_series(LineSeries::new(points, style))?,
        };
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_chart_plots_the_timeline() {
        let mut s0 = Second {
            second: 0,
            sent: 10,
            p99_us: 2500,
            ..Second::default()
        };
        s0.outcomes.ok = 8;
        s0.outcomes.reset = 2;
        let chart = load_chart("t", &[s0], Vec::new());
        let values: Vec<&[f64]> = chart.series.iter().map(|s| &s.values[..]).collect();
        assert_eq!(values, [&[10.0][..], &[2.0], &[2.5]]);
    }

    #[test]
    fn the_data_file_is_beside_the_picture() {
        assert_eq!(
            data_path(Path::new("target/demo/rollout.png")),
            Path::new("target/demo/rollout.json")
        );
    }

    #[test]
    fn labels_take_the_first_free_row() {
        // Three labels close together, then one far right, then one more on top of it.
        let placed = [(0, 50), (10, 50), (20, 50), (200, 50), (205, 50)];
        assert_eq!(label_rows(&placed, 4), [0, 1, 2, 0, 1]);
        // Out of rows: the one that ends first.
        assert_eq!(label_rows(&placed[..3], 2), [0, 1, 0]);
    }

    #[test]
    fn tiny_pictures_are_refused() {
        let chart = load_chart("t", &[], Vec::new());
        assert!(matches!(
            render(&chart, (10, 10)),
            Err(ChartError::TooSmall(10, 10))
        ));
    }
}
