//! What every chart shares: the font (registered once per process), drawing into an RGB
//! buffer and encoding it as PNG, and writing the PNG with its data beside it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Serialize;

use super::{ChartError, FONT_PATH, data_path};

/// Font family name the font is registered under.
pub(super) const FAMILY: &str = "sans-serif";

/// Smallest picture drawn, in pixels.
const MIN_SIZE: (u32, u32) = (200, 150);

/// Registers the font, lets `draw` paint an RGB buffer of `size` pixels, and
/// encodes the result as PNG.
pub(super) fn render_png(
    size: (u32, u32),
    draw: impl FnOnce(&mut [u8]) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Vec<u8>, ChartError> {
    let (width, height) = size;
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 {
        return Err(ChartError::TooSmall(width, height));
    }
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    draw(&mut rgb).map_err(|e| ChartError::Draw(e.to_string()))?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Writes `png_bytes` at `png` and `data` as JSON beside it ([`data_path`]), creating the
/// directory. Returns the data file's path.
pub(super) fn write_with_data(
    png: &Path,
    png_bytes: &[u8],
    data: &impl Serialize,
) -> Result<PathBuf, ChartError> {
    let write = |path: &Path, bytes: &[u8]| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ChartError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(path, bytes).map_err(|source| ChartError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write(png, png_bytes)?;
    let path = data_path(png);
    let mut json = serde_json::to_vec_pretty(data).expect("chart data is plain data");
    json.push(b'\n');
    write(&path, &json)?;
    Ok(path)
}

/// The chart's title, centred at the top of `header` (a `width`-pixel wide area).
pub(super) fn draw_title(
    header: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    width: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let font = (FAMILY, 22).into_font().color(&BLACK);
    let (title_w, _) = header.estimate_text_size(title, &font)?;
    let center = (i64::from(width) - i64::from(title_w)) / 2;
    header.draw_text(title, &font, (center.max(0) as i32, 8))?;
    Ok(())
}

fn register_font() -> Result<(), ChartError> {
    static FONT: OnceLock<Result<(), (PathBuf, Option<std::io::ErrorKind>)>> = OnceLock::new();
    let path = std::env::var_os("SLUICE_CHART_FONT")
        .map_or_else(|| PathBuf::from(FONT_PATH), PathBuf::from);
    let registered = FONT.get_or_init(|| {
        let bytes = std::fs::read(&path).map_err(|e| (path.clone(), Some(e.kind())))?;
        // plotters keeps fonts for the life of the process: read once, kept once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| (path.clone(), None))
    });
    match registered {
        Ok(()) => Ok(()),
        Err((path, Some(kind))) => Err(ChartError::FontMissing {
            path: path.clone(),
            source: (*kind).into(),
        }),
        Err((path, None)) => Err(ChartError::InvalidFont { path: path.clone() }),
    }
}
