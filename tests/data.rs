//! The data pipeline: discovery and decoding of ISIC-layout folders (mixed mask
//! formats, bad files), the split, the decoded cache, augmentation and batching.
//! Fixtures are tiny folders written here with the `image` crate (palette PNGs by hand).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use lesionseg::data::augment::{augment, AugmentParams, Transform};
use lesionseg::data::batch::{make_batch, normalize_image, IMAGENET_MEAN, IMAGENET_STD};
use lesionseg::data::cache::{load, LoadOptions};
use lesionseg::data::isic::{make_split, read_split_csv, split_seeded, write_split_csv, Dataset, Split};
use lesionseg::data::synth::{self, SynthOptions};
use lesionseg::data::{mask_file_name, ATTRIBUTES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IMAGES: &str = "ISIC2018_Task1-2_Training_Input";
const MASKS: &str = "ISIC2018_Task2_Training_GroundTruth_v3";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("lesionseg-data-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join(IMAGES)).unwrap();
        std::fs::create_dir_all(dir.join(MASKS)).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, Debug)]
enum MaskFormat {
    Gray8,
    Rgb8,
    Rgba8,
    Gray16,
    Palette,
}
const FORMATS: [MaskFormat; 5] =
    [MaskFormat::Gray8, MaskFormat::Rgb8, MaskFormat::Rgba8, MaskFormat::Gray16, MaskFormat::Palette];

/// The rectangle of attribute `k` in sample `s` of a `w`x`h` image: [x0, x1) x [y0, y1).
fn rect(s: usize, k: usize, w: u32, h: u32) -> (u32, u32, u32, u32) {
    let x0 = (3 + 5 * k as u32 + 2 * s as u32) % (w / 2);
    let y0 = (2 + 7 * k as u32 + 3 * s as u32) % (h / 2);
    (x0, x0 + w / 3, y0, y0 + h / 4)
}

fn inside((x0, x1, y0, y1): (u32, u32, u32, u32), x: u32, y: u32) -> bool {
    (x0..x1).contains(&x) && (y0..y1).contains(&y)
}

/// Writes sample `s` (id `000000s`): a noisy JPEG and five rectangle masks, attribute
/// `k` in format `FORMATS[(s + k) % 5]`. Attribute 4 is empty for odd `s`.
fn write_sample(root: &Path, s: usize, w: u32, h: u32) -> String {
    let id = format!("{s:07}");
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5 + s as u32) as u8, (y * 7) as u8, ((x ^ y) * 3) as u8]));
    img.save(root.join(IMAGES).join(format!("ISIC_{id}.jpg"))).unwrap();
    for (k, attr) in ATTRIBUTES.iter().enumerate() {
        let r = rect(s, k, w, h);
        let on = |x, y| inside(r, x, y) && !(k == 4 && s % 2 == 1);
        let path = root.join(MASKS).join(mask_file_name(&id, attr));
        match FORMATS[(s + k) % 5] {
            MaskFormat::Gray8 => GrayImage::from_fn(w, h, |x, y| Luma([if on(x, y) { 255 } else { 0 }])).save(&path),
            MaskFormat::Rgb8 => {
                RgbImage::from_fn(w, h, |x, y| Rgb(if on(x, y) { [255, 255, 255] } else { [0, 0, 0] })).save(&path)
            }
            // Transparent white is negative: both colour and alpha must be set.
            MaskFormat::Rgba8 => RgbaImage::from_fn(w, h, |x, y| {
                Rgba(if on(x, y) {
                    [255, 255, 255, 255]
                } else if x % 2 == 0 {
                    [255, 255, 255, 0]
                } else {
                    [0, 0, 0, 255]
                })
            })
            .save(&path),
            MaskFormat::Gray16 => {
                ImageBuffer::<Luma<u16>, _>::from_fn(w, h, |x, y| Luma([if on(x, y) { 65535 } else { 30000 }]))
                    .save(&path)
            }
            MaskFormat::Palette => {
                std::fs::write(&path, palette_png(w, h, |x, y| on(x, y) as u8)).unwrap();
                Ok(())
            }
        }
        .unwrap();
    }
    id
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// An 8-bit palette PNG (index 0 black, index 1 a dark red whose luminance is < 128 but
/// whose red channel is > 127), zlib with stored blocks so no compressor is needed.
fn palette_png(w: u32, h: u32, index: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        raw.extend((0..w).map(|x| index(x, y)));
    }
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, c) in chunks.iter().enumerate() {
        z.push((i + 1 == chunks.len()) as u8);
        z.extend((c.len() as u16).to_le_bytes());
        z.extend((!(c.len() as u16)).to_le_bytes());
        z.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &v in &raw {
        a = (a + v as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        png.extend_from_slice(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 3, 0, 0, 0]].concat();
    chunk(b"IHDR", &ihdr);
    chunk(b"PLTE", &[0, 0, 0, 200, 30, 30]);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

fn no_cache() -> LoadOptions {
    LoadOptions { use_cache: false, progress: false, ..Default::default() }
}

fn cached() -> LoadOptions {
    LoadOptions { progress: false, ..Default::default() }
}

#[test]
fn mixed_mask_formats_load_binary_and_nearest() {
    let dir = TempDir::new("formats");
    let (w, h, size) = (60u32, 45u32, 24usize);
    for s in 0..5 {
        write_sample(&dir.0, s, w, h);
    }
    // Files that are not ISIC images are ignored.
    std::fs::write(dir.0.join(IMAGES).join("LICENSE.txt"), "x").unwrap();
    // Test inputs ship without ground truth: ignored, with a note.
    let test_inputs = dir.0.join("ISIC2018_Task1-2_Test_Input");
    std::fs::create_dir_all(&test_inputs).unwrap();
    RgbImage::new(8, 8).save(test_inputs.join("ISIC_0099999.jpg")).unwrap();
    let (ds, report) = load(&dir.0, size, &no_cache()).unwrap();
    assert_eq!(ds.len(), 5, "{report}");
    assert_eq!(ds.ids, (0..5).map(|s| format!("{s:07}")).collect::<Vec<_>>());
    assert!(!report.from_cache && report.skipped.is_empty());
    assert!(report.notes.iter().any(|n| n.contains("Test_Input")), "{:?}", report.notes);
    for s in 0..5 {
        assert_eq!(ds.image(s).len(), size * size * 3);
        for k in 0..5 {
            let got = ds.mask_channel(s, k);
            let r = rect(s, k, w, h);
            for y in 0..size {
                for x in 0..size {
                    // Nearest at pixel centres: source = floor((x + 0.5) * w / size).
                    let (sx, sy) = (
                        ((2 * x + 1) * w as usize / (2 * size)) as u32,
                        ((2 * y + 1) * h as usize / (2 * size)) as u32,
                    );
                    let want = inside(r, sx, sy) && !(k == 4 && s % 2 == 1);
                    assert_eq!(
                        got[y * size + x],
                        want as u8,
                        "sample {s} attr {k} ({:?}) at ({x},{y})",
                        FORMATS[(s + k) % 5]
                    );
                }
            }
        }
    }
    assert!(ds.masks().iter().all(|&m| m < 32));
}

#[test]
fn synthetic_data_loads_with_its_masks() {
    let dir = TempDir::new("synth");
    let out = dir.0.join("synth");
    let opts = SynthOptions { progress: false, ..SynthOptions::new(4, 64, 11) };
    synth::synthesize_with(&out, &opts).unwrap();
    let (ds, report) = load(&out, 64, &cached()).unwrap();
    assert_eq!(ds.len(), 4, "{report}");
    for i in 0..4 {
        let truth = synth::sample(11, i, 64, 64).unwrap();
        for k in 0..5 {
            let want: Vec<u8> = truth.masks[k].as_raw().iter().map(|&v| (v > 127) as u8).collect();
            assert_eq!(ds.mask_channel(i, k), want, "sample {i} attribute {k}");
        }
    }
}

#[test]
fn split_is_seeded_80_20_and_csv_is_honoured() {
    let a = split_seeded(10, 0.2, 7);
    assert_eq!((a.train.len(), a.val.len()), (8, 2));
    assert_eq!(a, split_seeded(10, 0.2, 7));
    let mut all = [a.train.clone(), a.val.clone()].concat();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert!((0..20).any(|seed| split_seeded(10, 0.2, seed) != a), "the seed changes the split");
    let big = split_seeded(1000, 0.2, 1);
    assert_eq!((big.train.len(), big.val.len()), (800, 200));

    let dir = TempDir::new("split");
    let ids: Vec<String> = (0..5).map(|s| format!("{s:07}")).collect();
    let csv = dir.0.join("split.csv");
    let text = "id,split\nISIC_0000000,train\n0000001,VAL\nISIC_0000002,validation\nISIC_0000003,test\n\
                ISIC_0000004,train\nISIC_0000099,train\n";
    std::fs::write(&csv, text).unwrap();
    let split = read_split_csv(&csv, &ids).unwrap();
    assert_eq!(split, Split { train: vec![0, 4], val: vec![1, 2], test: vec![3] });
    let out = dir.0.join("written.csv");
    write_split_csv(&out, &ids, &split).unwrap();
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("ID,Split\nISIC_0000000,train\n"));
    assert_eq!(read_split_csv(&out, &ids).unwrap(), split);

    std::fs::write(&csv, "ID,Split\nISIC_0000000,train\nISIC_0000001,holdout\n").unwrap();
    let err = read_split_csv(&csv, &ids).unwrap_err().to_string();
    assert!(err.contains("split.csv") && err.contains("line 3") && err.contains("holdout"), "{err}");
    std::fs::write(&csv, "ID,Split\nISIC_0000000,train\n").unwrap();
    let err = read_split_csv(&csv, &ids).unwrap_err().to_string();
    assert!(err.contains("ISIC_0000001 is not listed (4 of"), "{err}");
    assert_eq!(make_split(&ids, None, 0.2, 3).unwrap(), split_seeded(5, 0.2, 3));
}

#[test]
fn bad_files_are_errors_naming_them_or_skipped() {
    let dir = TempDir::new("bad");
    for s in 0..4 {
        write_sample(&dir.0, s, 32, 32);
    }
    let jpeg = dir.0.join(IMAGES).join("ISIC_0000001.jpg");
    std::fs::write(&jpeg, [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 2, 3, 4, 5, 6]).unwrap();
    let err = load(&dir.0, 16, &no_cache()).unwrap_err().to_string();
    assert!(err.contains(&*jpeg.to_string_lossy()) && err.contains("decode"), "{err}");

    let mask = dir.0.join(MASKS).join(mask_file_name("0000002", "streaks"));
    std::fs::remove_file(&mask).unwrap();
    let opts = LoadOptions { skip_bad: true, ..no_cache() };
    let (ds, report) = load(&dir.0, 16, &opts).unwrap();
    assert_eq!(ds.ids, ["0000000", "0000003"]);
    assert_eq!(report.skipped.len(), 2);
    assert!(report.summary().contains("skipped 2: 1 corrupt image, 1 missing mask"), "{report}");

    write_sample(&dir.0, 1, 32, 32);
    let err = load(&dir.0, 16, &no_cache()).unwrap_err().to_string();
    assert!(err.contains(&*mask.to_string_lossy()) && err.contains("missing streaks mask"), "{err}");

    write_sample(&dir.0, 2, 32, 32);
    let wrong = dir.0.join(MASKS).join(mask_file_name("0000003", "globules"));
    GrayImage::new(31, 32).save(&wrong).unwrap();
    let err = load(&dir.0, 16, &no_cache()).unwrap_err().to_string();
    assert!(err.contains(&*wrong.to_string_lossy()) && err.contains("31x32"), "{err}");
}

fn touch(path: &Path) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn cache_is_reused_and_rebuilt_when_sources_change() {
    let dir = TempDir::new("cache");
    for s in 0..4 {
        write_sample(&dir.0, s, 40, 30);
    }
    let (first, r1) = load(&dir.0, 16, &cached()).unwrap();
    assert!(!r1.from_cache && r1.cache_path.is_some(), "{r1}");
    let (second, r2) = load(&dir.0, 16, &cached()).unwrap();
    assert!(r2.from_cache && r2.summary().contains("from cache"), "{r2}");
    assert_eq!(first, second);
    assert_eq!(first, load(&dir.0, 16, &no_cache()).unwrap().0, "the cache holds exactly the decoded data");

    touch(&dir.0.join(MASKS).join(mask_file_name("0000002", "globules")));
    let (_, r) = load(&dir.0, 16, &cached()).unwrap();
    assert!(!r.from_cache, "touching a mask rebuilds");
    assert!(load(&dir.0, 16, &cached()).unwrap().1.from_cache);
    let caches = std::fs::read_dir(dir.0.join(".lesionseg-cache")).unwrap().count();
    assert_eq!(caches, 1, "the stale cache was removed");

    write_sample(&dir.0, 4, 40, 30);
    let (ds, r) = load(&dir.0, 16, &cached()).unwrap();
    assert!(!r.from_cache && ds.len() == 5, "adding a sample rebuilds");
    let (ds, r) = load(&dir.0, 32, &cached()).unwrap();
    assert!(!r.from_cache && ds.size == 32, "another size rebuilds");

    let path = load(&dir.0, 16, &cached()).unwrap().1.cache_path.unwrap();
    for len in [10, 100, std::fs::metadata(&path).unwrap().len() - 1] {
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..len as usize]).unwrap();
        let (again, r) = load(&dir.0, 16, &cached()).unwrap();
        assert!(!r.from_cache && r.notes.iter().any(|n| n.contains("rebuilt")), "{len}: {:?}", r.notes);
        assert_eq!(again, ds_at(&dir.0, 16));
        let (_, r) = load(&dir.0, 16, &cached()).unwrap();
        assert!(r.from_cache);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(!load(&dir.0, 16, &cached()).unwrap().1.from_cache, "a flipped bit rebuilds");
    }
}

fn ds_at(root: &Path, size: usize) -> Dataset {
    load(root, size, &no_cache()).unwrap().0
}

#[test]
fn cache_keeps_the_skip_list() {
    let dir = TempDir::new("cacheskip");
    for s in 0..3 {
        write_sample(&dir.0, s, 32, 32);
    }
    let bad = dir.0.join(MASKS).join(mask_file_name("0000001", "milia_like_cyst"));
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let opts = LoadOptions { skip_bad: true, ..cached() };
    let (a, r1) = load(&dir.0, 16, &opts).unwrap();
    let (b, r2) = load(&dir.0, 16, &opts).unwrap();
    assert!(!r1.from_cache && r2.from_cache);
    assert_eq!(a, b);
    assert_eq!(r1.skipped, r2.skipped);
    assert!(r2.summary().contains("skipped 1: 1 corrupt mask"), "{r2}");
    // Without skip_bad, the cached skip is the same error a fresh decode gives.
    let err = load(&dir.0, 16, &cached()).unwrap_err().to_string();
    assert!(err.contains(&*bad.to_string_lossy()), "{err}");
}

/// A `size`x`size` image with a white `side`-square at (x0, y0) on a gradient, and a
/// mask with bits 0 and 3 set on the same square.
fn marker(size: usize, x0: usize, y0: usize, side: usize) -> (Vec<u8>, Vec<u8>) {
    let mut image = vec![0u8; size * size * 3];
    let mut mask = vec![0u8; size * size];
    for y in 0..size {
        for x in 0..size {
            let on = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
            let o = y * size + x;
            image[o * 3..o * 3 + 3].copy_from_slice(&if on {
                [255, 255, 255]
            } else {
                [(x * 2) as u8, (y * 2) as u8, 40]
            });
            mask[o] = if on { 0b01001 } else { 0 };
        }
    }
    (image, mask)
}

fn apply(t: &Transform, size: usize, image: &[u8], mask: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut oi, mut om) = (vec![0; image.len()], vec![0; mask.len()]);
    t.apply(size, image, mask, &mut oi, &mut om).unwrap();
    (oi, om)
}

#[test]
fn flips_and_right_angles_are_exact_and_aligned() {
    let size = 32;
    let (image, mask) = marker(size, 3, 5, 6);
    let (oi, om) = apply(&Transform { flip_h: true, ..Transform::IDENTITY }, size, &image, &mask);
    let (vi, vm) = apply(&Transform { flip_v: true, ..Transform::IDENTITY }, size, &image, &mask);
    for y in 0..size {
        for x in 0..size {
            let (o, h, v) = (y * size + x, y * size + size - 1 - x, (size - 1 - y) * size + x);
            assert_eq!((&oi[o * 3..o * 3 + 3], om[o]), (&image[h * 3..h * 3 + 3], mask[h]));
            assert_eq!((&vi[o * 3..o * 3 + 3], vm[o]), (&image[v * 3..v * 3 + 3], mask[v]));
        }
    }
    for deg in [90.0, 180.0, -90.0] {
        let (ri, rm) = apply(&Transform { rotation_deg: deg, ..Transform::IDENTITY }, size, &image, &mask);
        let mut a: Vec<u8> = image.chunks(3).map(|p| p[0]).collect();
        let mut b: Vec<u8> = ri.chunks(3).map(|p| p[0]).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{deg}°: a permutation of the pixels");
        let white: Vec<bool> = ri.chunks(3).map(|p| p == [255, 255, 255]).collect();
        let marked: Vec<bool> = rm.iter().map(|&m| m == 0b01001).collect();
        assert_eq!(white, marked, "{deg}°: marker moved together");
        assert_ne!(rm, mask, "{deg}°: the marker moved");
    }
}

#[test]
fn random_augmentation_keeps_masks_aligned_binary_and_is_deterministic() {
    let size = 64;
    let (image, mask) = marker(size, 20, 24, 14);
    let params = AugmentParams::default();
    for seed in 0..40 {
        let (oi, om) = augment(size, &image, &mask, &params, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        assert!(om.iter().all(|&m| m == 0 || m == 0b01001), "seed {seed}: masks stay the input's bit patterns");
        // Brightness/saturation jitter keeps the white marker bright and the gradient darker.
        let bright: Vec<bool> = oi.chunks(3).map(|p| p.iter().map(|&v| v as u32).sum::<u32>() > 3 * 200).collect();
        let on: Vec<bool> = om.iter().map(|&m| m != 0).collect();
        let inter = bright.iter().zip(&on).filter(|(a, b)| **a && **b).count();
        let union = bright.iter().zip(&on).filter(|(a, b)| **a || **b).count();
        assert!(union > 0 && inter as f64 / union as f64 > 0.75, "seed {seed}: IoU {inter}/{union}");
        let again = augment(size, &image, &mask, &params, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        assert_eq!((oi, om), again, "seed {seed}: deterministic");
    }
    let a = augment(size, &image, &mask, &params, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let b = augment(size, &image, &mask, &params, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
    assert_ne!(a, b);
    let same = augment(size, &image, &mask, &AugmentParams::identity(), &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(same, (image.clone(), mask.clone()), "identity parameters change nothing");
    let mut short = vec![0; 10];
    let err = Transform::IDENTITY.apply(size, &image, &mask, &mut short, &mut vec![0; size * size]).unwrap_err();
    assert!(err.to_string().contains("out_image"), "{err}");
}

#[test]
fn augmentation_is_cheap() {
    let size = 128;
    let (image, mask) = marker(size, 40, 50, 30);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let params = AugmentParams::default();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..8 {
            std::hint::black_box(augment(size, &image, &mask, &params, &mut rng).unwrap());
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    eprintln!("augment: 8 images of {size}x{size} in {:.2} ms (one thread)", best * 1e3);
    assert!(best < 0.05, "8 augmentations took {best} s");
}

#[test]
fn batches_are_nhwc_normalised_and_deterministic() {
    let size = 8;
    let mut images = vec![0u8; 2 * size * size * 3];
    let mut masks = vec![0u8; 2 * size * size];
    let (x, y) = (2, 3);
    let o = size * size + y * size + x; // sample 1, pixel (x, y)
    images[o * 3..o * 3 + 3].copy_from_slice(&[255, 0, 128]);
    masks[o] = 0b10101;
    let ds = Dataset::from_parts(size, vec!["a".into(), "b".into()], images, masks).unwrap();
    let batch = make_batch(&ds, &[1, 0], None).unwrap();
    assert_eq!((batch.n, batch.size, batch.input.len(), batch.target.len()), (2, 8, 2 * 64 * 3, 2 * 64 * 5));
    let p = y * size + x; // batch position 0 holds sample 1
    let want = [255.0, 0.0, 128.0].map(|v: f32| v / 255.0);
    for c in 0..3 {
        let expect = (want[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!((batch.input[p * 3 + c] - expect).abs() < 1e-6, "channel {c}");
    }
    assert_eq!(&batch.target[p * 5..p * 5 + 5], &[1.0, 0.0, 1.0, 0.0, 1.0]);
    assert!(batch.target.iter().filter(|&&t| t != 0.0).count() == 3);
    let zero = (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1];
    assert!((batch.input[(size * size + p) * 3 + 1] - zero).abs() < 1e-6, "sample 0 is black");
    assert_eq!(normalize_image(&[255, 0, 128]), batch.input[p * 3..p * 3 + 3]);

    let params = AugmentParams::default();
    let mut r1 = ChaCha8Rng::seed_from_u64(5);
    let mut r2 = ChaCha8Rng::seed_from_u64(5);
    let a = make_batch(&ds, &[0, 1, 1], Some((&params, &mut r1))).unwrap();
    let b = make_batch(&ds, &[0, 1, 1], Some((&params, &mut r2))).unwrap();
    assert_eq!(a, b);
    assert!(a.target.iter().all(|&t| t == 0.0 || t == 1.0));
    assert_eq!(r1.gen::<u64>(), r2.gen::<u64>());
    assert!(make_batch(&ds, &[2], None).is_err());
}

/// Timings for the report: 200 JPEGs of 600x450 loaded at 128 (cache build, then
/// cache read). `cargo test --test data -- --ignored --nocapture timing`.
#[test]
#[ignore = "timing report, not a check: run with --ignored --nocapture"]
fn timing_cache_200_images() {
    let dir = TempDir::new("timing");
    for s in 0..200 {
        write_sample(&dir.0, s, 600, 450);
    }
    let (_, build) = load(&dir.0, 128, &cached()).unwrap();
    let (_, read) = load(&dir.0, 128, &cached()).unwrap();
    eprintln!("build: {build}\nread:  {read}");
}
