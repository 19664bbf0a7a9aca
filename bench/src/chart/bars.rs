//! Grouped bar charts: one group per category (a service count), one bar per series (a way
//! of programming the node) in each group, the value written above each bar.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::canvas::{self, FAMILY};
use super::{ChartError, color_of};

/// What to draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BarChart {
    pub title: String,
    /// Label of the value axis.
    pub y_axis: String,
    /// Label of each group, left to right.
    pub groups: Vec<String>,
    /// One bar per group each; a missing or non-finite value draws no bar.
    pub series: Vec<BarSeries>,
}

/// The bars of one series, one value per group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BarSeries {
    pub name: String,
    /// RGB.
    pub color: [u8; 3],
    pub values: Vec<f64>,
}

/// Draws the chart: a PNG of `size` pixels (width, height).
pub fn render_bars(chart: &BarChart, size: (u32, u32)) -> Result<Vec<u8>, ChartError> {
    canvas::render_png(size, |rgb| draw(chart, rgb, size))
}

/// Writes the chart as a PNG at `png` and its data beside it (`.json`); returns the data
/// file's path.
pub fn write_bars(chart: &BarChart, png: &Path, size: (u32, u32)) -> Result<PathBuf, ChartError> {
    canvas::write_with_data(png, &render_bars(chart, size)?, chart)
}

/// A value in at most 4 significant characters: 950, 12.3k, 4.56M.
pub fn compact(v: f64) -> String {
    let (scaled, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = match scaled.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        _ => 2,
    };
    let digits = if unit.is_empty() && v.fract() == 0.0 {
        0
    } else {
        digits
    };
    format!("{scaled:.digits$}{unit}")
}

/// Room above the highest bar, for its label.
const HEADROOM: f64 = 1.15;
/// Height of the title and legend above the plot, in pixels.
const HEADER: u32 = 64;

fn draw(
    chart: &BarChart,
    rgb: &mut [u8],
    size: (u32, u32),
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(rgb, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);

    canvas::draw_title(&header, &chart.title, size.0)?;
    let legend_font = (FAMILY, 14).into_font().color(&BLACK);
    let mut x = 70;
    for series in &chart.series {
        header.draw(&Rectangle::new(
            [(x, 40), (x + 18, 52)],
            color_of(series.color).filled(),
        ))?;
        header.draw_text(&series.name, &legend_font, (x + 24, 39))?;
        let (w, _) = header.estimate_text_size(&series.name, &legend_font)?;
        x += 24 + w as i32 + 28;
    }

    let groups = chart.groups.len().max(1);
    let max = chart
        .series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let y_max = if max > 0.0 { max * HEADROOM } else { 1.0 };
    let mut ctx = ChartBuilder::on(&body)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..groups as f64, 0.0..y_max)?;
    ctx.configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc(chart.y_axis.as_str())
        .y_label_formatter(&|v| compact(*v))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    let label_font = (FAMILY, 12).into_font().color(&BLACK);
    let group_font = (FAMILY, 15).into_font().color(&BLACK);
    let bars = chart.series.len().max(1) as f64;
    let width = 0.8 / bars;
    for (g, name) in chart.groups.iter().enumerate() {
        let (w, _) = root.estimate_text_size(name, &group_font)?;
        let (cx, base) = ctx.backend_coord(&(g as f64 + 0.5, 0.0));
        root.draw_text(name, &group_font, (cx - w as i32 / 2, base + 12))?;
    }
    for (s, series) in chart.series.iter().enumerate() {
        let color = color_of(series.color);
        for (g, &v) in series.values.iter().enumerate().take(groups) {
            if !v.is_finite() {
                continue;
            }
            let x0 = g as f64 + 0.1 + s as f64 * width;
            ctx.draw_series(std::iter::once(Rectangle::new(
                [(x0 + 0.05 * width, 0.0), (x0 + 0.95 * width, v)],
                color.filled(),
            )))?;
            let text = compact(v);
            let (w, h) = root.estimate_text_size(&text, &label_font)?;
            let (cx, top) = ctx.backend_coord(&(x0 + width / 2.0, v));
            root.draw_text(&text, &label_font, (cx - w as i32 / 2, top - h as i32 - 3))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_compactly() {
        let cases = [
            (950.0, "950"),
            (12_345.0, "12.3k"),
            (4_560_000.0, "4.56M"),
            (123_456.0, "123k"),
            (0.5, "0.50"),
        ];
        for (v, text) in cases {
            assert_eq!(compact(v), text, "{v}");
        }
    }
}
