//! The embeddable predictor from Rust: load a checkpoint once, predict the five
//! lesion-attribute masks of images of any size at their own size (what
//! `lesionseg predict` writes, as a library call).
//!
//! ```text
//! cargo run --release --example predictor -- WEIGHTS IMAGE... [--device auto|cpu|cuda] [--out DIR]
//! ```
//!
//! Prints each attribute's share of positive pixels; with `--out`, writes
//! `<stem>_attribute_<attribute>.png` (0/255) there.

use std::path::PathBuf;

use lesionseg::predictor::{Predictor, PredictorOptions, ATTRIBUTES};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut options = PredictorOptions::default();
    let (mut weights, mut images, mut out) = (None, Vec::new(), None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => options.device = args.next().ok_or("--device needs a value")?.parse()?,
            "--out" => out = Some(PathBuf::from(args.next().ok_or("--out needs a folder")?)),
            _ if weights.is_none() => weights = Some(PathBuf::from(arg)),
            _ => images.push(PathBuf::from(arg)),
        }
    }
    let (Some(weights), false) = (weights, images.is_empty()) else {
        return Err("usage: predictor WEIGHTS IMAGE... [--device auto|cpu|cuda] [--out DIR]".into());
    };

    // Once: the weights on the device (a GPU needs only the driver).
    let mut predictor = Predictor::load(&weights, &options)?;
    if let Some(note) = predictor.device_note() {
        eprintln!("{note}");
    }
    println!(
        "{} on {}, network input {}x{}",
        weights.display(),
        predictor.device(),
        predictor.size(),
        predictor.size()
    );
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)?;
    }

    // Per image: RGB bytes in, five masks at the image's own size out.
    for path in &images {
        let rgb = image::open(path)?.into_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let masks = predictor.masks(rgb.as_raw(), w, h, 0.3)?;
        let shares: Vec<String> = ATTRIBUTES
            .iter()
            .zip(&masks.maps)
            .map(|(a, m)| {
                format!("{a} {:.1}%", 100.0 * m.iter().filter(|&&v| v == 255).count() as f64 / m.len() as f64)
            })
            .collect();
        println!("{} ({w}x{h}): {}", path.display(), shares.join(", "));
        if let Some(dir) = &out {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            for (a, m) in ATTRIBUTES.iter().zip(&masks.maps) {
                image::GrayImage::from_raw(w as u32, h as u32, m.clone())
                    .ok_or("mask size")?
                    .save(dir.join(format!("{stem}_attribute_{a}.png")))?;
            }
        }
    }
    Ok(())
}
