//! The synthetic data generator: ISIC folder layout and names, mask format,
//! determinism, attribute prevalence, that the masks mark visibly different pixels,
//! and clear errors on bad arguments.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use lesionseg::data::synth::{sample, synthesize, synthesize_with, SynthOptions, PREVALENCE};
use lesionseg::data::{mask_file_name, ATTRIBUTES, TRAIN_IMAGE_DIR, TRAIN_MASK_DIR};
use lesionseg::Error;

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-synth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quiet(count: usize, size: usize, seed: u64) -> SynthOptions {
    SynthOptions { progress: false, ..SynthOptions::new(count, size, seed) }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

fn read_mask(path: &Path) -> GrayImage {
    match image::open(path).unwrap() {
        image::DynamicImage::ImageLuma8(m) => m,
        other => panic!("{}: want 8-bit gray, got {:?}", path.display(), other.color()),
    }
}

#[test]
fn layout_names_and_mask_format() {
    let out = temp_dir("layout");
    let summary = synthesize_with(&out, &quiet(5, 64, 1)).unwrap();
    assert_eq!(summary.count, 5);
    assert_eq!(names(&out), [TRAIN_IMAGE_DIR, TRAIN_MASK_DIR].map(String::from).into());
    let ids: Vec<String> = (0..5).map(|i| format!("{i:07}")).collect();
    let want_images: BTreeSet<String> = ids.iter().map(|id| format!("ISIC_{id}.jpg")).collect();
    assert_eq!(names(&out.join(TRAIN_IMAGE_DIR)), want_images, "no temporary files left behind");
    let want_masks: BTreeSet<String> =
        ids.iter().flat_map(|id| ATTRIBUTES.map(|a| format!("ISIC_{id}_attribute_{a}.png"))).collect();
    assert_eq!(names(&out.join(TRAIN_MASK_DIR)), want_masks);
    assert_eq!(mask_file_name("0000003", "streaks"), "ISIC_0000003_attribute_streaks.png");
    for id in &ids {
        let image = image::open(out.join(TRAIN_IMAGE_DIR).join(format!("ISIC_{id}.jpg"))).unwrap();
        assert_eq!((image.width(), image.height()), (64, 64));
        assert!(matches!(image, image::DynamicImage::ImageRgb8(_)));
        for attribute in ATTRIBUTES {
            let mask = read_mask(&out.join(TRAIN_MASK_DIR).join(mask_file_name(id, attribute)));
            assert_eq!(mask.dimensions(), (64, 64), "{id} {attribute}");
            assert!(mask.as_raw().iter().all(|&v| v == 0 || v == 255), "{id} {attribute}: values other than 0/255");
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn files_are_deterministic_and_match_sample() {
    let (a, b, c) = (temp_dir("det-a"), temp_dir("det-b"), temp_dir("det-c"));
    synthesize_with(&a, &quiet(6, 48, 7)).unwrap();
    synthesize_with(&b, &quiet(6, 48, 7)).unwrap();
    synthesize_with(&c, &quiet(6, 48, 8)).unwrap();
    let mut images_differ = 0;
    for dir in [TRAIN_IMAGE_DIR, TRAIN_MASK_DIR] {
        for name in names(&a.join(dir)) {
            let bytes = std::fs::read(a.join(dir).join(&name)).unwrap();
            assert_eq!(bytes, std::fs::read(b.join(dir).join(&name)).unwrap(), "{name} differs with the same seed");
            images_differ += (bytes != std::fs::read(c.join(dir).join(&name)).unwrap()) as usize;
        }
    }
    assert!(images_differ >= 6, "a different seed changed only {images_differ} files");
    // The in-memory sample is what was written (masks exactly; the image up to JPEG).
    for index in 0..6 {
        let id = format!("{index:07}");
        let s = sample(7, index, 48, 48).unwrap();
        for (k, attribute) in ATTRIBUTES.iter().enumerate() {
            let mask = read_mask(&a.join(TRAIN_MASK_DIR).join(mask_file_name(&id, attribute)));
            assert_eq!(mask, s.masks[k], "{id} {attribute}");
        }
        let jpeg = image::open(a.join(TRAIN_IMAGE_DIR).join(format!("ISIC_{id}.jpg"))).unwrap().to_rgb8();
        let err = mean_abs_diff(&jpeg, &s.image);
        assert!(err < 8.0, "{id}: JPEG far from the rendered image (mean abs diff {err})");
    }
    for dir in [a, b, c] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| x.abs_diff(y) as u64).sum();
    sum as f64 / a.as_raw().len() as f64
}

/// Prevalence over 200 images. Presence follows low-discrepancy sequences, so the
/// count of each attribute is within a few images of `200 * target` (bounds: ±5
/// images, 2.5 points; independent coin flips would need ±4 binomial deviations,
/// e.g. 45–73% for the pigment network); masks lost to a dermoscope's dark corners
/// or to a too-small region can only lower it a little.
#[test]
fn prevalence_near_isic_rates() {
    let out = temp_dir("prevalence");
    let summary = synthesize_with(&out, &quiet(200, 64, 0)).unwrap();
    println!("{summary}");
    let prevalence = summary.prevalence();
    for k in 0..5 {
        let (lo, hi) = (PREVALENCE[k] - 0.025, PREVALENCE[k] + 0.025);
        assert!(
            (lo..=hi).contains(&prevalence[k]),
            "{}: prevalence {:.3} outside [{lo:.3}, {hi:.3}]",
            ATTRIBUTES[k],
            prevalence[k],
        );
        // ISIC masks cover from a fraction of a percent (cysts) to a few tens of percent.
        let area = summary.mean_coverage[k];
        assert!((0.002..=0.35).contains(&area), "{}: mean mask area {area:.4}", ATTRIBUTES[k]);
    }
    // The summary counts what is on disk.
    for (k, &count) in summary.with_attribute.iter().enumerate() {
        assert_eq!((0..200).filter(|&i| has(&out, i, k)).count(), count, "{}", ATTRIBUTES[k]);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// Per-pixel statistics of one region of a set of samples.
#[derive(Default)]
struct Stats {
    pixels: f64,
    luminance: f64,
    /// Sum of |horizontal| + |vertical| luminance differences: texture.
    gradient: f64,
}

impl Stats {
    fn add(&mut self, image: &RgbImage, x: u32, y: u32) {
        let lum = |x: u32, y: u32| {
            let p = image.get_pixel(x, y).0;
            (0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64) / 255.0
        };
        self.pixels += 1.0;
        self.luminance += lum(x, y);
        self.gradient += (lum(x + 1, y) - lum(x, y)).abs() + (lum(x, y + 1) - lum(x, y)).abs();
    }
    fn mean_luminance(&self) -> f64 {
        self.luminance / self.pixels
    }
    fn mean_gradient(&self) -> f64 {
        self.gradient / self.pixels
    }
}

/// What makes the attributes learnable: masked pixels look different from the plain
/// lesion. Meshes, streaks and globules are textured (far larger local differences
/// than the unmarked lesion); milia are bright.
#[test]
fn masked_pixels_differ_from_plain_lesion() {
    let mut inside: [Stats; 5] = Default::default();
    let mut plain = Stats::default();
    // Enough images that even streaks (2.9%) appear a few times.
    let mut images_with = [0; 5];
    for index in 0..400 {
        if images_with.iter().all(|&n| n >= 3) {
            break;
        }
        let s = sample(3, index, 128, 128).unwrap();
        for (n, mask) in images_with.iter_mut().zip(&s.masks) {
            *n += mask.as_raw().contains(&255) as usize;
        }
        for y in 0..127 {
            for x in 0..127 {
                let marked: Vec<usize> = (0..5).filter(|&k| s.masks[k].get_pixel(x, y).0[0] > 0).collect();
                for &k in &marked {
                    inside[k].add(&s.image, x, y);
                }
                if marked.is_empty() && s.lesion.get_pixel(x, y).0[0] > 0 {
                    plain.add(&s.image, x, y);
                }
            }
        }
    }
    let report = |k: usize| {
        format!(
            "{}: {} px, luminance {:.3} (plain lesion {:.3}), gradient {:.4} (plain lesion {:.4})",
            ATTRIBUTES[k],
            inside[k].pixels,
            inside[k].mean_luminance(),
            plain.mean_luminance(),
            inside[k].mean_gradient(),
            plain.mean_gradient()
        )
    };
    for (k, stats) in inside.iter().enumerate() {
        println!("{}", report(k));
        assert!(stats.pixels > 100.0, "{}", report(k));
    }
    for k in [0, 1, 2, 4] {
        assert!(inside[k].mean_gradient() > 1.5 * plain.mean_gradient(), "{} not textured", report(k));
    }
    assert!(inside[0].mean_luminance() < plain.mean_luminance(), "pigment network not darker: {}", report(0));
    assert!(inside[3].mean_luminance() > plain.mean_luminance() + 0.1, "cysts not bright: {}", report(3));
}

#[test]
fn aspect_ratio_option() {
    let out = temp_dir("aspect");
    let opts = SynthOptions { aspect_ratios: vec![4.0 / 3.0], ..quiet(2, 48, 5) };
    assert_eq!(opts.dimensions(0), (64, 48));
    synthesize_with(&out, &opts).unwrap();
    let image = image::open(out.join(TRAIN_IMAGE_DIR).join("ISIC_0000001.jpg")).unwrap();
    assert_eq!((image.width(), image.height()), (64, 48));
    let mask = read_mask(&out.join(TRAIN_MASK_DIR).join(mask_file_name("0000001", "globules")));
    assert_eq!(mask.dimensions(), (64, 48));
    // Mixed ratios: each image takes one of them, deterministically.
    let mixed = SynthOptions { aspect_ratios: vec![1.0, 0.75, 1.5], ..quiet(40, 64, 5) };
    let dims: BTreeSet<(usize, usize)> = (0..40).map(|i| mixed.dimensions(i)).collect();
    assert_eq!(dims, [(64, 64), (64, 85), (96, 64)].into());
    assert_eq!(mixed.dimensions(17), mixed.dimensions(17));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_arguments_are_errors() {
    let out = temp_dir("bad");
    let config = |r: lesionseg::Result<_>| match r {
        Err(e @ Error::Argument { .. }) => e.to_string(),
        Err(other) => panic!("want an Argument error, got {other}"),
        Ok(_) => panic!("want an Argument error, got Ok"),
    };
    assert!(config(synthesize(&out, 0, 64, 0)).contains("--count"));
    assert!(config(synthesize(&out, 1, 31, 0)).contains("--size"));
    assert!(config(synthesize(&out, 1, 0, 0)).contains("--size"));
    for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.0] {
        config(synthesize_with(&out, &SynthOptions { aspect_ratios: vec![ratio], ..quiet(1, 64, 0) }));
    }
    config(synthesize_with(&out, &SynthOptions { aspect_ratios: vec![], ..quiet(1, 64, 0) }));
    config(synthesize_with(&out, &SynthOptions { jpeg_quality: 0, ..quiet(1, 64, 0) }));
    assert!(sample(0, 0, 16, 64).is_err());
    // Nothing was written by the rejected calls.
    assert!(names(&out).is_empty());
    // An output root that is a file: an I/O error naming it.
    let file = out.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    match synthesize(&file, 1, 64, 0) {
        Err(Error::Io { path, .. }) => assert!(path.starts_with(&file)),
        other => panic!("want an Io error, got {:?}", other.map(|s| s.count)),
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn has(out: &Path, index: usize, attribute: usize) -> bool {
    let path = out.join(TRAIN_MASK_DIR).join(mask_file_name(&format!("{index:07}"), ATTRIBUTES[attribute]));
    read_mask(&path).as_raw().contains(&255)
}

/// Not run by default: `cargo test --release --test synth -- --ignored --nocapture`.
/// Times 100 images at 256x256, prints the prevalence over 1000, and leaves PNG
/// previews (image | image with masks tinted) in `$TMPDIR/lesionseg-synth-preview`.
#[test]
#[ignore = "timing and preview images, not a check: run with --release --ignored --nocapture"]
fn timing_prevalence_and_previews() {
    let out = temp_dir("timing");
    let start = std::time::Instant::now();
    synthesize_with(&out, &quiet(100, 256, 0)).unwrap();
    println!("100 images at 256x256: {:.2} s", start.elapsed().as_secs_f64());
    let summary = synthesize_with(&out, &SynthOptions { force: true, ..quiet(1000, 256, 0) }).unwrap();
    println!("{summary}");
    let previews = std::env::temp_dir().join("lesionseg-synth-preview");
    std::fs::create_dir_all(&previews).unwrap();
    // Red, cyan, magenta, yellow, green in ATTRIBUTES order.
    let tints = [[255, 0, 0], [0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 255, 0]];
    // The first four images, then the first two showing each attribute.
    let mut picks: Vec<usize> = (0..4).collect();
    for k in 0..5 {
        let with_k = (0..1000).filter(|&i| has(&out, i, k)).take(2);
        picks.extend(with_k.filter(|i| !picks.contains(i)).collect::<Vec<_>>());
    }
    for index in picks {
        let jpeg = image::open(out.join(TRAIN_IMAGE_DIR).join(format!("ISIC_{index:07}.jpg"))).unwrap().to_rgb8();
        let s = sample(0, index, 256, 256).unwrap();
        let mut both = RgbImage::new(512, 256);
        for (x, y, p) in jpeg.enumerate_pixels() {
            both.put_pixel(x, y, *p);
            let mut q = p.0.map(|v| v as f32);
            for (mask, tint) in s.masks.iter().zip(tints) {
                if mask.get_pixel(x, y).0[0] > 0 {
                    q = std::array::from_fn(|c| 0.55 * q[c] + 0.45 * tint[c] as f32);
                }
            }
            both.put_pixel(x + 256, y, image::Rgb(q.map(|v| v as u8)));
        }
        let present: Vec<&str> = (0..5).filter(|&k| has(&out, index, k)).map(|k| ATTRIBUTES[k]).collect();
        println!("preview {index:04}: {present:?}");
        both.save(previews.join(format!("{index:04}.png"))).unwrap();
    }
    std::fs::remove_dir_all(&out).unwrap();
}
