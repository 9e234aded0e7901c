//! The layout kernels (`kernels/layout.cu`) against their CPU references
//! (`backend::cpu::layout`), bit for bit: `Kernels<Emu>` always, `Kernels<Cuda>` when
//! a GPU is usable (otherwise that half prints why it was skipped).
//!
//! Sizes sweep batch 1–3, H and W odd and even (1x1 and non-square), channel counts
//! from 1 to 100 (every transpose tile width, partial tiles in both directions), and
//! NHWC sides that are channel slices (pitch > C) at odd offsets. Everything outside
//! an output view holds a sentinel that must survive; outputs start as NaN.

pub mod common;

use common::kernels::{download, upload};
use lesionseg::backend::cpu::layout as cpu_layout;
use lesionseg::backend::cuda::layout;
use lesionseg::backend::cuda::{Executor, Kernels};
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{At, Backend, ImageParams, LayoutParams};
use lesionseg::data::batch::{IMAGENET_MEAN, IMAGENET_STD};
use lesionseg::device::test_gpu;
use rand::Rng;

/// What the elements of an output buffer outside its view hold.
const SENTINEL: f32 = 4242.5;

/// A whole output buffer: NaN in the view (`pixels` × `c` at `pitch` from `off`),
/// the sentinel elsewhere.
fn poisoned_view(off: usize, pixels: usize, c: usize, pitch: usize, len: usize) -> Vec<f32> {
    let mut v = vec![SENTINEL; len];
    for p in 0..pixels {
        v[off + p * pitch..][..c].fill(f32::NAN);
    }
    v
}

/// Bitwise equality of two whole buffers (the sentinel included).
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!(
            "{what}: element {i} of {} is {} (bits {:#x}), expected {} ({:#x})",
            got.len(),
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

struct ImageCase {
    p: ImageParams,
    rgb: Vec<u8>,
    off: usize,
}

fn image_cases(rng: &mut impl Rng) -> Vec<ImageCase> {
    let dims = [(1, 1, 1), (1, 3, 5), (2, 7, 4), (3, 16, 9), (1, 33, 31), (2, 64, 48)];
    dims.iter()
        .map(|&(n, h, w)| {
            let y_pitch = [3, 4, 7, 64][rng.gen_range(0..4)];
            let p = ImageParams { n, h, w, y_pitch, mean: IMAGENET_MEAN, std: IMAGENET_STD };
            let mut rgb: Vec<u8> = (0..p.bytes()).map(|_| rng.gen()).collect();
            // Both ends of the byte range.
            rgb[0] = 0;
            if rgb.len() > 1 {
                rgb[1] = 255;
            }
            ImageCase { p, rgb, off: rng.gen_range(0..5) }
        })
        .collect()
}

/// The normalised image on `be` (the whole output buffer), or the CPU reference on
/// `None`.
fn normalize_on<E: Executor>(be: Option<&Kernels<E>>, c: &ImageCase) -> Vec<f32> {
    let len = c.off + c.p.y_len() + 3;
    let init = poisoned_view(c.off, c.p.pixels(), 3, c.p.y_pitch, len);
    let Some(be) = be else {
        let mut y = init;
        cpu_layout::normalize_image(&mut y[c.off..], &c.rgb, &c.p);
        return y;
    };
    let y = upload(be, &init);
    let rgb = layout::upload_bytes(be, &c.rgb).expect("upload bytes");
    layout::normalize_image(be, At::new(&y, c.off), At::new(&rgb, 0), &c.p)
        .unwrap_or_else(|e| panic!("{} normalize_image {:?}: {e}", be.name(), c.p));
    download(be, &y, len)
}

struct TransposeCase {
    p: LayoutParams,
    /// Offsets of the NCHW and the NHWC operand.
    nchw_off: usize,
    nhwc_off: usize,
    nchw: Vec<f32>,
    nhwc: Vec<f32>,
}

fn transpose_cases(rng: &mut impl Rng) -> Vec<TransposeCase> {
    let mut dims = vec![
        (1, 1, 1, 1),
        (1, 3, 1, 1),
        (2, 5, 3, 7),
        (3, 3, 16, 9),
        (1, 32, 5, 6),
        (2, 33, 7, 3),
        (1, 64, 12, 11),
        (2, 100, 4, 5),
        (1, 8, 40, 33),
    ];
    for _ in 0..4 {
        dims.push((
            rng.gen_range(1..=3),
            [1, 2, 3, 5, 7, 13, 40][rng.gen_range(0..7)],
            rng.gen_range(1..=24),
            rng.gen_range(1..=24),
        ));
    }
    dims.iter()
        .map(|&(n, c, h, w)| {
            let pitch = if rng.gen_bool(0.5) { c } else { c + rng.gen_range(1..6) };
            let p = LayoutParams { n, c, h, w, pitch };
            let (nchw_off, nhwc_off) = (rng.gen_range(0..5), rng.gen_range(0..5));
            let nchw = (0..nchw_off + p.nchw_len() + 2).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let nhwc = (0..nhwc_off + p.nhwc_len() + 2).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            TransposeCase { p, nchw_off, nhwc_off, nchw, nhwc }
        })
        .collect()
}

/// (NHWC from the NCHW input, NCHW from the NHWC input), whole output buffers, on
/// `be`, or the CPU reference on `None`.
fn transpose_on<E: Executor>(be: Option<&Kernels<E>>, c: &TransposeCase) -> [Vec<f32>; 2] {
    let p = &c.p;
    let pixels = p.n * p.h * p.w;
    let nhwc_init = poisoned_view(c.nhwc_off, pixels, p.c, p.pitch, c.nhwc.len());
    let nchw_init = poisoned_view(c.nchw_off, 1, p.nchw_len(), p.nchw_len(), c.nchw.len());
    let Some(be) = be else {
        let (mut to_nhwc, mut to_nchw) = (nhwc_init, nchw_init);
        cpu_layout::nchw_to_nhwc(&mut to_nhwc[c.nhwc_off..], &c.nchw[c.nchw_off..], p);
        cpu_layout::nhwc_to_nchw(&mut to_nchw[c.nchw_off..], &c.nhwc[c.nhwc_off..], p);
        return [to_nhwc, to_nchw];
    };
    let (x_nchw, x_nhwc) = (upload(be, &c.nchw), upload(be, &c.nhwc));
    let (y_nhwc, y_nchw) = (upload(be, &nhwc_init), upload(be, &nchw_init));
    layout::nchw_to_nhwc(be, At::new(&y_nhwc, c.nhwc_off), At::new(&x_nchw, c.nchw_off), p)
        .unwrap_or_else(|e| panic!("{} nchw_to_nhwc {p:?}: {e}", be.name()));
    layout::nhwc_to_nchw(be, At::new(&y_nchw, c.nchw_off), At::new(&x_nhwc, c.nhwc_off), p)
        .unwrap_or_else(|e| panic!("{} nhwc_to_nchw {p:?}: {e}", be.name()));
    [download(be, &y_nhwc, c.nhwc.len()), download(be, &y_nchw, c.nchw.len())]
}

/// Every layout kernel on `be` against the CPU, bitwise.
fn sweep<E: Executor>(be: &Kernels<E>, images: &[ImageCase], transposes: &[TransposeCase]) {
    for c in images {
        let what = format!("{} normalize_image {:?} offset {}", be.name(), c.p, c.off);
        assert_bits(&what, &normalize_on(Some(be), c), &normalize_on::<E>(None, c));
    }
    for c in transposes {
        let [got_nhwc, got_nchw] = transpose_on(Some(be), c);
        let [want_nhwc, want_nchw] = transpose_on::<E>(None, c);
        assert_bits(&format!("{} nchw_to_nhwc {:?}", be.name(), c.p), &got_nhwc, &want_nhwc);
        assert_bits(&format!("{} nhwc_to_nchw {:?}", be.name(), c.p), &got_nchw, &want_nchw);
    }
}

#[test]
fn layout_matches_cpu_exactly() {
    let mut rng = common::rng();
    let (images, transposes) = (image_cases(&mut rng), transpose_cases(&mut rng));
    sweep(&emu::backend(), &images, &transposes);
    if let Some(gpu) = test_gpu("layout_matches_cpu_exactly") {
        sweep(&gpu, &images, &transposes);
    }
}

/// The CPU reference of the normalisation is the data pipeline's own.
#[test]
fn normalisation_reference_is_the_data_pipelines() {
    let rgb: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 2]).collect();
    let p = ImageParams { n: 1, h: 16, w: 16, y_pitch: 3, mean: IMAGENET_MEAN, std: IMAGENET_STD };
    let mut y = vec![0.0; p.y_len()];
    cpu_layout::normalize_image(&mut y, &rgb, &p);
    let want = lesionseg::data::batch::normalize_image(&rgb);
    assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// A round trip NCHW → NHWC (pitch) → NCHW on the emulator gives the input back.
#[test]
fn round_trip_is_identity() {
    let be = emu::backend();
    let p = LayoutParams { n: 2, c: 5, h: 13, w: 9, pitch: 7 };
    let x: Vec<f32> = (0..p.nchw_len()).map(|i| i as f32 * 0.25 - 3.0).collect();
    let (xb, mid, back) = (upload(&be, &x), be.alloc(p.nhwc_len()).unwrap(), be.alloc(p.nchw_len()).unwrap());
    layout::nchw_to_nhwc(&be, At::new(&mid, 0), At::new(&xb, 0), &p).unwrap();
    layout::nhwc_to_nchw(&be, At::new(&back, 0), At::new(&mid, 0), &p).unwrap();
    assert_eq!(download(&be, &back, x.len()), x);
}

#[test]
fn layout_is_race_free_and_deterministic() {
    let mut rng = common::rng();
    let (images, transposes) = (image_cases(&mut rng), transpose_cases(&mut rng));
    let report = race_check(|be| {
        let mut out = Vec::new();
        for c in images.iter().take(4) {
            out.extend(normalize_on(Some(be), c));
        }
        for c in transposes.iter().take(8) {
            out.extend(transpose_on(Some(be), c).concat());
        }
        Ok(out)
    })
    .expect("race check ran");
    report.check(0.0).expect("identical bytes under every schedule");
}

/// Shape errors: pitch below C, an operand past its buffer, overlapping operands.
#[test]
fn bad_operands_are_errors() {
    let be = emu::backend();
    let p = LayoutParams { n: 1, c: 3, h: 2, w: 2, pitch: 3 };
    let (x, y) = (be.alloc(12).unwrap(), be.alloc(12).unwrap());
    assert!(layout::nchw_to_nhwc(&be, At::new(&y, 0), At::new(&x, 0), &p).is_ok());
    assert!(layout::nchw_to_nhwc(&be, At::new(&y, 0), At::new(&x, 0), &LayoutParams { pitch: 2, ..p }).is_err());
    assert!(layout::nchw_to_nhwc(&be, At::new(&y, 1), At::new(&x, 0), &p).is_err());
    assert!(layout::nhwc_to_nchw(&be, At::new(&x, 0), At::new(&x, 0), &p).is_err());
    let ip = ImageParams { n: 1, h: 2, w: 2, y_pitch: 3, mean: IMAGENET_MEAN, std: IMAGENET_STD };
    let rgb = layout::upload_bytes(&be, &[7u8; 12]).unwrap();
    assert!(layout::normalize_image(&be, At::new(&y, 0), At::new(&rgb, 0), &ip).is_ok());
    assert!(layout::normalize_image(&be, At::new(&y, 0), At::new(&rgb, 1), &ip).is_err());
}
