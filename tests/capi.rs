//! The C interface end to end: `examples/predictor.c` compiled with `cc` against
//! `include/lesionseg.h`, linked against the `cdylib` this build made
//! (`liblesionseg.so`), run on the CPU backend, and its masks compared bit for bit
//! with `lesionseg predict` on the same image; the Rust [`Predictor`] too.
//!
//! The image is an odd-sized synthetic photograph written both as PNG (for
//! `predict`) and as PPM (for the C example, which has no decoder); the weights are
//! the narrow model of `tests/fixtures`; the threshold is the median probability of
//! an attribute, so the masks are neither empty nor full.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{Rgb, RgbImage};
use lesionseg::device::Device;
use lesionseg::predictor::{Predictor, PredictorOptions, ATTRIBUTES};

const SIZE: usize = 64;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lesionseg-capi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `target/<profile>/`, where cargo put the `cdylib` of this build (the test runs
/// from `target/<profile>/deps/`).
/// The folder of `liblesionseg.so`, built first: `cargo test` builds the library as
/// an rlib for the tests, not its cdylib, so the test asks cargo for it (up to date
/// in a second when it already is), in the profile the test runs under.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--lib", "--quiet"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build --lib");
    assert!(status.success(), "cargo build --lib (for liblesionseg.so) failed: {status}");
    dir
}

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let d = ((fx - 0.45).powi(2) + (fy - 0.55).powi(2)).sqrt();
        let v = |a: f32| (a.clamp(0.0, 1.0) * 255.0) as u8;
        let grain = ((x * 7919 + y * 104_729) % 23) as f32 / 230.0;
        Rgb([v(0.85 - d + grain), v(0.55 - 0.8 * d + 0.3 * fx), v(0.45 - 0.6 * d + 0.2 * (fy * 11.0).sin())])
    })
}

fn write_ppm(path: &Path, img: &RgbImage) {
    let mut bytes = format!("P6\n# written by tests/capi.rs\n{} {}\n255\n", img.width(), img.height()).into_bytes();
    bytes.extend_from_slice(img.as_raw());
    std::fs::write(path, bytes).unwrap();
}

/// The pixels of a binary PGM (P5, maxval 255) as the C example writes it.
fn read_pgm(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<&[u8]> = bytes.splitn(5, |b| b.is_ascii_whitespace()).collect();
    assert_eq!(header[0], b"P5", "{}", path.display());
    let num = |b: &[u8]| std::str::from_utf8(b).unwrap().parse::<u32>().unwrap();
    let (w, h) = (num(header[1]), num(header[2]));
    assert_eq!(num(header[3]), 255);
    (w, h, header[4].to_vec())
}

#[test]
fn c_example_matches_predict_bit_for_bit() {
    let dir = temp_dir("c");
    let lib = library_dir();
    assert!(
        lib.join("liblesionseg.so").is_file(),
        "no liblesionseg.so in {} (the cdylib of Cargo.toml's [lib])",
        lib.display()
    );
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/narrow_weights.safetensors");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    // Compile and link the example against the header and the library.
    let exe = dir.join("predictor_c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(root.join("include"))
        .arg(root.join("examples/predictor.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-llesionseg")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(built.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&built.stderr));

    // One odd-sized image, as PNG and as PPM.
    let (w, h) = (157u32, 118u32);
    let img = photo(w, h);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    img.save(images.join("ISIC_0000042.png")).unwrap();
    let ppm = dir.join("ISIC_0000042.ppm");
    write_ppm(&ppm, &img);

    // A threshold that splits an attribute's probabilities in half.
    let options = PredictorOptions { device: Device::Cpu, size: Some(SIZE), ..Default::default() };
    let mut predictor = Predictor::load(&weights, &options).unwrap();
    let probs = predictor.probabilities(img.as_raw(), w as usize, h as usize).unwrap();
    let mut sorted = probs.maps[0].clone();
    sorted.sort_by(f32::total_cmp);
    let threshold = f64::from(sorted[sorted.len() / 2]);
    let threshold_arg = format!("{threshold:?}");

    // lesionseg predict, on the CPU.
    let pred = dir.join("pred");
    let run = Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args(["predict", "--device", "cpu", "--size", &SIZE.to_string(), "--threshold", &threshold_arg])
        .arg("--images")
        .arg(&images)
        .arg("--weights")
        .arg(&weights)
        .arg("--out")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(run.status.success(), "predict failed: {}", String::from_utf8_lossy(&run.stderr));

    // The C example, on the CPU.
    let c_out = dir.join("c");
    std::fs::create_dir_all(&c_out).unwrap();
    let run = Command::new(&exe)
        .arg(&weights)
        .arg(&ppm)
        .arg(&c_out)
        .args(["cpu", &threshold_arg, &SIZE.to_string()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the C example failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{}", String::from_utf8_lossy(&run.stdout).trim());

    let rust = predictor.masks(img.as_raw(), w as usize, h as usize, threshold).unwrap();
    let mut mixed = 0;
    for (k, attribute) in ATTRIBUTES.iter().enumerate() {
        let png = image::open(pred.join(format!("ISIC_0000042_attribute_{attribute}.png"))).unwrap().into_luma8();
        let (cw, ch, c_mask) = read_pgm(&c_out.join(format!("ISIC_0000042_attribute_{attribute}.pgm")));
        assert_eq!((cw, ch), (w, h), "{attribute}: C mask size");
        assert_eq!(png.dimensions(), (w, h), "{attribute}: predict mask size");
        assert!(c_mask == *png.as_raw(), "{attribute}: the C example's mask differs from lesionseg predict's");
        assert!(rust.maps[k] == *png.as_raw(), "{attribute}: the Rust Predictor's mask differs from predict's");
        let on = c_mask.iter().filter(|&&v| v == 255).count();
        assert_eq!(on + c_mask.iter().filter(|&&v| v == 0).count(), c_mask.len(), "{attribute}: only 0 and 255");
        mixed += usize::from(on > 0 && on < c_mask.len());
    }
    assert!(mixed > 0, "every mask is empty or full: the comparison would prove little");
    let _ = std::fs::remove_dir_all(&dir);
}
