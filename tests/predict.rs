//! The `predict` command end to end on the CPU backend with a tiny random model:
//! masks come back at exactly the original sizes (odd, portrait, landscape) under
//! the challenge's names, binary, batched by size, matching a single-image forward
//! pass; overlays are written; bad inputs are clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use lesionseg::backend::cpu::Cpu;
use lesionseg::metrics::ATTRIBUTES;
use lesionseg::model::{init::default_init, ParamTable, UNetConfig};
use lesionseg::predict::{self, resize_bilinear, PredictOptions};
use lesionseg::tensor::Tensor;
use lesionseg::weights;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-predict-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A random UNet16 at 1/16 width, saved as a training checkpoint would be: size
/// metadata and optimizer tensors that predict must ignore.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let table = ParamTable::new(&UNetConfig::scaled(1.0 / 16.0).unwrap());
    let flat = default_init(&table, 7);
    let path = dir.join("tiny.safetensors");
    let adam = vec![("adam.exp_avg".to_string(), Tensor::new(vec![table.len], vec![0.0; table.len]).unwrap())];
    let meta = HashMap::from([("size".to_string(), "64".to_string())]);
    weights::save_params_with_metadata(&path, &table, &flat, &adam, meta).unwrap();
    path
}

/// A smooth synthetic "lesion" photograph of `w`×`h`.
fn photo(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let d = ((fx - 0.5).powi(2) + (fy - 0.5).powi(2)).sqrt();
        let v = |a: f32| (a.clamp(0.0, 1.0) * 255.0) as u8;
        Rgb([v(0.9 - d + 0.1 * (seed as f32)), v(0.6 - d * 0.8 + 0.3 * fx), v(0.5 - d * 0.6 + 0.2 * (fy * 12.0).sin())])
    })
}

fn read_gray(path: &Path) -> image::GrayImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_luma8()
}

#[test]
fn predicts_masks_at_the_original_size() {
    let dir = temp_dir("sizes");
    let weights_path = tiny_checkpoint(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    // (name, width, height): an odd portrait, two landscapes of one size (batched
    // together), a small one, and a non-ISIC name.
    let cases = [
        ("ISIC_0000001.jpg", 767, 1022),
        ("ISIC_0000002.jpg", 1024, 768),
        ("ISIC_0000003.png", 1024, 768),
        ("ISIC_0000004.jpeg", 600, 450),
        ("lesion photo.png", 96, 70),
    ];
    for (i, &(name, w, h)) in cases.iter().enumerate() {
        photo(w, h, i as u32).save(images.join(name)).unwrap();
    }
    std::fs::write(images.join("notes.txt"), "ignored").unwrap();
    let out = dir.join("masks");
    let overlays = dir.join("overlays");
    let mut opts = PredictOptions::new(&images, &weights_path, &out);
    opts.batch_size = 2;
    opts.overlays = Some(overlays.clone());
    opts.progress = false;
    let summary = predict::run(&Cpu, &opts).unwrap();
    assert_eq!((summary.images, summary.masks, summary.overlays), (5, 25, 5));
    assert_eq!((summary.size, summary.size_source), (64, "checkpoint"));
    assert_eq!(summary.batches, 4, "the two 1024x768 images share a batch");

    for &(name, w, h) in &cases {
        let stem = Path::new(name).file_stem().unwrap().to_string_lossy().into_owned();
        for attr in ATTRIBUTES {
            let m = read_gray(&out.join(format!("{stem}_attribute_{attr}.png")));
            assert_eq!(m.dimensions(), (w, h), "{name} {attr}");
            assert!(m.pixels().all(|p| p[0] == 0 || p[0] == 255), "{name} {attr}: values other than 0/255");
        }
        // Photographs keep their size; a small image gets its legend in a panel beside it.
        let o = image::open(overlays.join(format!("{stem}_overlay.png"))).unwrap();
        if w.min(h) >= 300 {
            assert_eq!((o.width(), o.height()), (w, h), "{name} overlay");
        } else {
            assert!(o.width() > w && o.height() >= h, "{name} overlay: {}x{}", o.width(), o.height());
        }
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 25, "only the masks, no temporary files");
}

/// The second image of a batch against its own single-image forward pass, with the
/// threshold at the median probability of attribute 0 (so the mask is non-trivial).
#[test]
fn batched_prediction_matches_a_single_forward_pass() {
    let dir = temp_dir("single");
    let weights_path = tiny_checkpoint(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let (w, h, size) = (200u32, 150u32, 64usize);
    photo(w, h, 1).save(images.join("ISIC_0000001.png")).unwrap();
    photo(w, h, 3).save(images.join("ISIC_0000002.png")).unwrap();

    let (model, _) = predict::load_checkpoint(&Cpu, &weights_path).unwrap();
    let ws = model.workspace(&Cpu, 1, size, size).unwrap();
    let (rgb, _, _) = lesionseg::data::isic::load_image_resized(&images.join("ISIC_0000002.png"), size).unwrap();
    use lesionseg::backend::Backend;
    Cpu.upload(&ws.acts, ws.plan.input.off, &lesionseg::data::batch::normalize_image(&rgb)).unwrap();
    model.forward(&Cpu, &ws).unwrap();
    let logits = lesionseg::forward::download_nchw(&Cpu, &ws.acts, ws.plan.mask_logits).unwrap();
    let probs: Vec<f32> = logits.data[..size * size].iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
    let up = resize_bilinear(&probs, size, size, w as usize, h as usize);
    let mut sorted = up.clone();
    sorted.sort_by(f32::total_cmp);
    let threshold = f64::from(sorted[sorted.len() / 2]);

    let mut opts = PredictOptions::new(&images, &weights_path, dir.join("out"));
    opts.threshold = threshold;
    opts.progress = false;
    let summary = predict::run(&Cpu, &opts).unwrap();
    assert_eq!(summary.batches, 1);
    let m = read_gray(&dir.join("out/ISIC_0000002_attribute_pigment_network.png"));
    let mut on = 0;
    for (i, p) in m.pixels().enumerate() {
        let want = f64::from(up[i]) > threshold;
        on += usize::from(p[0] == 255);
        // Batch and single passes may round differently: only pixels within float
        // noise of the threshold may disagree.
        assert!((p[0] == 255) == want || (f64::from(up[i]) - threshold).abs() < 1e-5, "pixel {i}");
    }
    assert!(on > 0 && on < m.len(), "a non-trivial mask ({on} pixels on)");

    // Writing into the image folder, twice: the masks are not taken for images.
    opts.out = images.clone();
    for _ in 0..2 {
        assert_eq!(predict::run(&Cpu, &opts).unwrap().images, 2);
    }
}

#[test]
fn bilinear_resize_matches_pytorch() {
    // F.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear",
    // align_corners=False) = [0, 0.25, 0.75, 1].
    assert_eq!(resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1), vec![0.0, 0.25, 0.75, 1.0]);
    let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
    assert_eq!(resize_bilinear(&src, 4, 3, 4, 3), src, "same size is the identity");
    assert!(resize_bilinear(&[0.5; 6], 3, 2, 7, 5).iter().all(|&v| v == 0.5));
}

#[test]
fn clear_errors() {
    let dir = temp_dir("errors");
    let weights_path = tiny_checkpoint(&dir);
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let quiet = |images: &Path, weights: &Path| {
        let mut o = PredictOptions::new(images, weights, dir.join("out"));
        o.progress = false;
        o
    };
    let err = predict::run(&Cpu, &quiet(&empty, &weights_path)).unwrap_err().to_string();
    assert!(err.contains("no .jpg"), "{err}");

    let err = predict::run(&Cpu, &quiet(&empty, &dir.join("missing.safetensors"))).unwrap_err().to_string();
    assert!(err.contains("missing.safetensors"), "{err}");

    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    photo(64, 64, 0).save(broken.join("ISIC_0000001.png")).unwrap();
    std::fs::write(broken.join("ISIC_0000002.jpg"), b"not a jpeg").unwrap();
    let err = predict::run(&Cpu, &quiet(&broken, &weights_path)).unwrap_err().to_string();
    assert!(err.contains("ISIC_0000002.jpg"), "{err}");

    let mut bad_size = quiet(&broken, &weights_path);
    bad_size.size = Some(100);
    assert!(predict::run(&Cpu, &bad_size).unwrap_err().to_string().contains("multiple of 32"));
}

/// An overlay of a synthetic sample with its true masks: every present attribute's
/// colour appears (its outline), the legend darkens the corner, the rest of the
/// image is untouched. `LESIONSEG_KEEP=1` keeps the PNG for a look.
#[test]
fn overlay_draws_each_attribute_and_a_legend() {
    use lesionseg::overlay::{render_overlay, write_overlay, COLORS};
    let dir = temp_dir("overlay");
    // Several samples, so that most attributes appear in at least one.
    for index in 0..4 {
        let s = lesionseg::data::synth::sample(11, index, 600, 450).unwrap();
        let masks: Vec<Vec<u8>> = s.masks.iter().map(|m| m.as_raw().clone()).collect();
        let img = render_overlay(&s.image, &masks).unwrap();
        assert_eq!(img.dimensions(), (600, 450));
        for (k, m) in masks.iter().enumerate() {
            let present = m.iter().any(|&v| v != 0);
            // Pixels of the exact attribute colour outside the legend box.
            let drawn = img.enumerate_pixels().filter(|(x, y, p)| (*x > 300 || *y > 150) && p.0 == COLORS[k]).count();
            assert_eq!(present, drawn > 0, "sample {index}, attribute {k}: present {present}, {drawn} outline pixels");
        }
        let untouched = img.enumerate_pixels().filter(|(x, y, p)| {
            let i = (*y * 600 + *x) as usize;
            (*x > 300 || *y > 150) && masks.iter().all(|m| m[i] == 0) && **p == *s.image.get_pixel(*x, *y)
        });
        assert!(untouched.count() > 0);
        write_overlay(&dir.join(format!("overlay_{index}.png")), &s.image, &masks).unwrap();
    }
    let err = render_overlay(&RgbImage::new(4, 4), &vec![vec![0; 16]; 4]).unwrap_err();
    assert!(err.to_string().contains("5 masks"), "{err}");
    if std::env::var_os("LESIONSEG_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `predict` through the emulated kernels with bf16 tensor-core convolutions against
/// the same kernels in f32, the threshold at the median probability of attribute 0
/// (so masks are far from all-empty or all-set): the masks agree but for pixels
/// whose probability sits within bf16 rounding of the threshold (at most 1%; 0.03%
/// measured).
#[test]
fn bf16_prediction_agrees_with_f32() {
    let dir = temp_dir("bf16");
    let weights_path = tiny_checkpoint(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (i, (w, h)) in [(96, 70), (64, 64)].into_iter().enumerate() {
        photo(w, h, i as u32).save(images.join(format!("ISIC_000000{i}.png"))).unwrap();
    }
    let size = 64;
    let (model, _) = predict::load_checkpoint(&Cpu, &weights_path).unwrap();
    let ws = model.workspace(&Cpu, 1, size, size).unwrap();
    let (rgb, _, _) = lesionseg::data::isic::load_image_resized(&images.join("ISIC_0000000.png"), size).unwrap();
    use lesionseg::backend::Backend;
    Cpu.upload(&ws.acts, ws.plan.input.off, &lesionseg::data::batch::normalize_image(&rgb)).unwrap();
    model.forward(&Cpu, &ws).unwrap();
    let logits = lesionseg::forward::download_nchw(&Cpu, &ws.acts, ws.plan.mask_logits).unwrap();
    let mut probs: Vec<f32> = logits.data[..size * size].iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
    probs.sort_by(f32::total_cmp);
    let threshold = f64::from(probs[probs.len() / 2]);
    let run = |precision: lesionseg::backend::cuda::Precision, out: &Path| {
        let mut be = lesionseg::backend::emu::backend();
        be.precision = precision;
        let mut opts = PredictOptions::new(&images, &weights_path, out);
        opts.threshold = threshold;
        opts.progress = false;
        predict::run(&be, &opts).unwrap();
    };
    let (f32_out, bf16_out) = (dir.join("f32"), dir.join("bf16"));
    run(lesionseg::backend::cuda::Precision::F32, &f32_out);
    run(lesionseg::backend::cuda::Precision::Bf16, &bf16_out);
    let (mut differ, mut total, mut set) = (0usize, 0usize, 0usize);
    for entry in std::fs::read_dir(&f32_out).unwrap() {
        let name = entry.unwrap().file_name();
        let (a, b) = (read_gray(&f32_out.join(&name)), read_gray(&bf16_out.join(&name)));
        assert_eq!(a.dimensions(), b.dimensions(), "{name:?}");
        differ += a.pixels().zip(b.pixels()).filter(|(p, q)| p[0] != q[0]).count();
        set += a.pixels().filter(|p| p[0] == 255).count();
        total += a.pixels().len();
    }
    assert_eq!(total, 5 * (96 * 70 + 64 * 64));
    assert!(set > 0 && set < total, "degenerate masks: {set} of {total} set");
    assert!(differ * 100 <= total, "{differ} of {total} mask pixels differ between bf16 and f32");
    eprintln!("bf16 vs f32 masks: {differ} of {total} pixels differ ({set} set)");
}

/// `predict --replicas 3` deals the batches to three threads and writes the same
/// files, byte for byte, as one replica (on the CPU, and through the command line).
#[test]
fn replicas_write_the_same_files_as_one() {
    let dir = temp_dir("replicas");
    let weights_path = tiny_checkpoint(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (i, (w, h)) in [(61, 45), (61, 45), (61, 45), (40, 52), (33, 33), (61, 45), (40, 52)].into_iter().enumerate() {
        photo(w, h, i as u32).save(images.join(format!("ISIC_{i:07}.png"))).unwrap();
    }
    let run = |replicas: usize, out: &str| {
        let mut o = PredictOptions::new(&images, &weights_path, dir.join(out));
        o.batch_size = 2;
        o.size = Some(32);
        o.progress = false;
        o.replicas = replicas;
        let s = predict::run_replicas(|_| Ok(Cpu), &o).unwrap();
        assert_eq!((s.images, s.batches), (7, 4));
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join(out))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let one = run(1, "one");
    assert_eq!(one.len(), 7 * ATTRIBUTES.len());
    assert!(one == run(3, "three"), "3 replicas wrote different files");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args(["predict", "--device", "cpu", "--size", "32", "--batch-size", "2", "--replicas", "2"])
        .args(["--images".as_ref(), images.as_os_str(), "--weights".as_ref(), weights_path.as_os_str()])
        .args(["--out".as_ref(), dir.join("cli").as_os_str()])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    for (name, bytes) in &one {
        assert!(&std::fs::read(dir.join("cli").join(name)).unwrap() == bytes, "{name} differs");
    }
}
