//! Line plots of training curves as PNG files, with no font files and no plotting
//! library: axes, "nice" tick labels, grid, legend and lines drawn with `imageproc`
//! and the 8x8 bitmap font of [`text`].
//!
//! Series are grouped into panels by their `panel` name, in order of first
//! appearance (the trainer uses two: losses and Jaccards); panels are laid out side
//! by side, or in a grid beyond two.

pub(crate) mod file;
pub(crate) mod text;

pub(crate) use file::write_png;

use std::path::Path;

use image::{ExtendedColorType, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_line_segment_mut};

use crate::error::Result;
use text::{draw_text, fill, text_width, GLYPH};

/// Size of the image written by [`plot_curves`].
pub const WIDTH: u32 = 900;
/// Height of the image written by [`plot_curves`].
pub const HEIGHT: u32 = 600;

/// Distinct, colour-blind-friendly line colours (Okabe–Ito), for callers to pick from.
pub const PALETTE: [[u8; 3]; 7] =
    [[0, 114, 178], [213, 94, 0], [0, 158, 115], [204, 121, 167], [230, 159, 0], [86, 180, 233], [0, 0, 0]];

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// One curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Title of the panel it is drawn in.
    pub panel: String,
    /// Line colour (RGB).
    pub color: [u8; 3],
    /// (x, y) points in drawing order; points with a non-finite coordinate are
    /// skipped and break the line.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` in panel `panel`.
    pub fn new(name: impl Into<String>, panel: impl Into<String>, color: [u8; 3], points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), panel: panel.into(), color, points }
    }
}

/// Draws `series` under `title` and writes the PNG ([`WIDTH`]×[`HEIGHT`]) to `path`
/// atomically.
pub fn plot_curves(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let img = render_curves(title, series);
    write_png(path, img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
}

/// The trainer's figure: a "loss" panel (training and validation loss) and a
/// "validation Jaccard" panel (the challenge's micro-averaged Jaccard and the
/// paper's mean of per-attribute Jaccards), each as (epoch, value) points.
pub fn plot_training(
    path: &Path,
    train_loss: &[(f64, f64)],
    val_loss: &[(f64, f64)],
    val_micro_jaccard: &[(f64, f64)],
    val_mean_jaccard: &[(f64, f64)],
) -> Result<()> {
    let series = [
        Series::new("train loss", "loss", PALETTE[0], train_loss.to_vec()),
        Series::new("validation loss", "loss", PALETTE[1], val_loss.to_vec()),
        Series::new("micro Jaccard (challenge)", "validation Jaccard", PALETTE[2], val_micro_jaccard.to_vec()),
        Series::new("mean Jaccard (paper)", "validation Jaccard", PALETTE[3], val_mean_jaccard.to_vec()),
    ];
    plot_curves(path, "training curves", &series)
}

/// The image [`plot_curves`] writes.
pub fn render_curves(title: &str, series: &[Series]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, BACKGROUND);
    let tw = text_width(title, 2) as i64;
    draw_text(&mut img, (i64::from(WIDTH) - tw) / 2, 12, title, 2, INK);

    let mut panels: Vec<(&str, Vec<&Series>)> = Vec::new();
    for s in series {
        match panels.iter_mut().find(|(name, _)| *name == s.panel) {
            Some((_, members)) => members.push(s),
            None => panels.push((&s.panel, vec![s])),
        }
    }
    let cols = if panels.len() <= 2 { panels.len().max(1) } else { (panels.len() as f64).sqrt().ceil() as usize };
    let rows = panels.len().div_ceil(cols).max(1);
    let (top, margin) = (40i64, 10i64);
    let cell_w = (i64::from(WIDTH) - margin) / cols as i64;
    let cell_h = (i64::from(HEIGHT) - top - margin) / rows as i64;
    for (i, (name, members)) in panels.iter().enumerate() {
        let (c, r) = ((i % cols) as i64, (i / cols) as i64);
        let rect = Rect { x: margin + c * cell_w, y: top + r * cell_h, w: cell_w - margin, h: cell_h - margin };
        draw_panel(&mut img, rect, name, members);
    }
    img
}

#[derive(Clone, Copy)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

/// A linear axis: data range and tick step.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// Covers `[min, max]` with about five "nice" (1, 2, 5 × 10^k) steps; `integer`
    /// keeps steps ≥ 1 (epochs).
    fn new(min: f64, max: f64, integer: bool) -> Axis {
        let (mut min, mut max) = (min, max);
        if max - min <= f64::EPSILON * max.abs().max(1.0) {
            let pad = if integer { 1.0 } else { (min.abs() * 0.1).max(0.05) };
            min -= pad;
            max += pad;
        }
        let raw = (max - min) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let mut step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
        if integer {
            step = step.max(1.0).round();
        }
        Axis { lo: (min / step).floor() * step, hi: (max / step).ceil() * step, step }
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n).map(|i| self.lo + i as f64 * self.step).collect()
    }

    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).clamp(0.0, 6.0) as usize;
        let s = format!("{v:.decimals$}");
        // "-0.00" reads as a bug on an axis.
        if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
            s.trim_start_matches('-').to_string()
        } else {
            s
        }
    }
}

fn draw_panel(img: &mut RgbImage, cell: Rect, title: &str, series: &[&Series]) {
    let finite: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let tw = text_width(title, 2) as i64;
    draw_text(img, cell.x + (cell.w - tw) / 2, cell.y, title, 2, INK);
    let (min_x, max_x, min_y, max_y) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY), |(a, b, c, d), &(x, y)| {
            (a.min(x), b.max(x), c.min(y), d.max(y))
        });
    let (xa, ya) = if finite.is_empty() {
        (Axis::new(0.0, 1.0, true), Axis::new(0.0, 1.0, false))
    } else {
        let integer = finite.iter().all(|(x, _)| x.fract() == 0.0);
        (Axis::new(min_x, max_x, integer), Axis::new(min_y, max_y, false))
    };
    let label_w = ya.ticks().iter().map(|&t| text_width(&ya.label(t), 1) as i64).max().unwrap_or(0);
    let plot = Rect { x: cell.x + label_w + 12, y: cell.y + 28, w: cell.w - label_w - 20, h: cell.h - 28 - 36 };
    let px = |x: f64| plot.x as f32 + ((x - xa.lo) / (xa.hi - xa.lo)) as f32 * plot.w as f32;
    let py = |y: f64| (plot.y + plot.h) as f32 - ((y - ya.lo) / (ya.hi - ya.lo)) as f32 * plot.h as f32;

    // Grid and tick labels, then the frame over them.
    for t in ya.ticks() {
        let y = py(t);
        draw_line_segment_mut(img, (plot.x as f32, y), ((plot.x + plot.w) as f32, y), GRID);
        let l = ya.label(t);
        draw_text(img, plot.x - 6 - text_width(&l, 1) as i64, y as i64 - 4, &l, 1, INK);
    }
    for t in xa.ticks() {
        let x = px(t);
        draw_line_segment_mut(img, (x, plot.y as f32), (x, (plot.y + plot.h) as f32), GRID);
        let l = xa.label(t);
        draw_text(img, x as i64 - text_width(&l, 1) as i64 / 2, plot.y + plot.h + 6, &l, 1, INK);
    }
    let axis_name = "epoch";
    draw_text(img, plot.x + (plot.w - text_width(axis_name, 1) as i64) / 2, plot.y + plot.h + 22, axis_name, 1, INK);
    let (x0, y0, x1, y1) = (plot.x as f32, plot.y as f32, (plot.x + plot.w) as f32, (plot.y + plot.h) as f32);
    for (a, b) in [((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))] {
        draw_line_segment_mut(img, a, b, INK);
    }
    if finite.is_empty() {
        let msg = "no data yet";
        draw_text(img, plot.x + (plot.w - text_width(msg, 2) as i64) / 2, plot.y + plot.h / 2 - 8, msg, 2, INK);
    }

    let mut drawn: Vec<(f32, f32)> = Vec::new();
    for s in series {
        let color = Rgb(s.color);
        let pts: Vec<Option<(f32, f32)>> =
            s.points.iter().map(|&(x, y)| (x.is_finite() && y.is_finite()).then(|| (px(x), py(y)))).collect();
        let few = pts.iter().flatten().count() <= 40;
        for (i, p) in pts.iter().enumerate() {
            let Some(p) = *p else { continue };
            let next = pts.get(i + 1).copied().flatten();
            if let Some(q) = next {
                thick_line(img, p, q, color);
            }
            let prev = if i > 0 { pts[i - 1] } else { None };
            let isolated = prev.is_none() && next.is_none();
            if few || isolated {
                draw_filled_circle_mut(
                    img,
                    (p.0.round() as i32, p.1.round() as i32),
                    if isolated { 4 } else { 3 },
                    color,
                );
            }
            drawn.push(p);
        }
    }
    draw_legend(img, plot, series, &drawn);
}

/// A line about two pixels wide.
fn thick_line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), color: Rgb<u8>) {
    for (dx, dy) in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5)] {
        draw_line_segment_mut(img, (a.0 + dx, a.1 + dy), (b.0 + dx, b.1 + dy), color);
    }
}

/// The legend box in the corner of the plot that hides the fewest points.
fn draw_legend(img: &mut RgbImage, plot: Rect, series: &[&Series], drawn: &[(f32, f32)]) {
    if series.is_empty() {
        return;
    }
    let row = 14i64;
    let w = series.iter().map(|s| text_width(&s.name, 1) as i64).max().unwrap_or(0) + 40;
    let h = row * series.len() as i64 + 8;
    let corners = [
        (plot.x + plot.w - w - 6, plot.y + 6),
        (plot.x + 6, plot.y + 6),
        (plot.x + plot.w - w - 6, plot.y + plot.h - h - 6),
        (plot.x + 6, plot.y + plot.h - h - 6),
    ];
    let hidden = |&(x, y): &(i64, i64)| {
        drawn
            .iter()
            .filter(|p| (p.0 as i64) >= x && (p.0 as i64) < x + w && (p.1 as i64) >= y && (p.1 as i64) < y + h)
            .count()
    };
    // min_by_key keeps the first of equals: top right unless it hides more.
    let (x, y) = corners.iter().copied().min_by_key(hidden).unwrap_or(corners[0]);
    fill(img, x, y, w, h, BACKGROUND);
    for (a, b) in
        [((x, y), (x + w, y)), ((x + w, y), (x + w, y + h)), ((x + w, y + h), (x, y + h)), ((x, y + h), (x, y))]
    {
        draw_line_segment_mut(img, (a.0 as f32, a.1 as f32), (b.0 as f32, b.1 as f32), GRID);
    }
    for (i, s) in series.iter().enumerate() {
        let cy = y + 4 + row * i as i64 + row / 2;
        fill(img, x + 6, cy - 1, 22, 3, Rgb(s.color));
        draw_text(img, x + 34, cy - i64::from(GLYPH) / 2, &s.name, 1, INK);
    }
}
