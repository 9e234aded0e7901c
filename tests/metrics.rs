//! The ISIC 2018 Task 2 scorer: a hand-computed example, agreement with an
//! independent re-implementation on random masks, the empty-attribute convention,
//! ROC AUC against brute-force pair counting, the training-metric helpers, and the
//! `eval` command on folders of PNGs.

pub mod common;

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use lesionseg::eval;
use lesionseg::metrics::{self, Counts, RawCounts, ScoreAccumulator, ATTRIBUTES, K};
use rand::Rng;

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-12, "{what}: got {got}, want {want}");
}

/// Two images, 2x2 and 2x4, with counts worked out by hand (see the comments).
fn hand_example() -> Counts {
    hand_example_upto(5)
}

/// [`hand_example`]'s attributes `0..attrs` only.
fn hand_example_upto(attrs: usize) -> Counts {
    let mut c = Counts::new();
    // Attribute 0. Image A (4 px): TP 1, FP 1, FN 1, TN 1 → each 0.25.
    c.add_image(0, &[255u8, 255, 0, 0], &[255u8, 0, 255, 0]).unwrap();
    // Image B (8 px): TP 3, FN 1, TN 4 → 0.375, 0, 0.125, 0.5.
    c.add_image(0, &[255u8, 255, 255, 255, 0, 0, 0, 0], &[255u8, 255, 255, 0, 0, 0, 0, 0]).unwrap();
    // Attribute 1: nothing in A; one false positive (200 > 128) in B → FP 0.125.
    c.add_image(1, &[0u8; 4], &[0u8; 4]).unwrap();
    c.add_image(1, &[0u8; 8], &[0u8, 0, 0, 200, 0, 0, 0, 0]).unwrap();
    // Attribute 2: 129 is foreground, 128 is not → TP 0.25 in A, nothing in B.
    c.add_image(2, &[129u8, 128, 0, 0], &[129u8, 0, 0, 0]).unwrap();
    c.add_image(2, &[0u8; 8], &[0u8; 8]).unwrap();
    // Attributes 3 and 4: empty everywhere (vacuous).
    for k in 3..attrs {
        c.add_image(k, &[false; 4], &[false; 4]).unwrap();
        c.add_image(k, &[false; 8], &[false; 8]).unwrap();
    }
    c
}

#[test]
fn hand_computed_example() {
    let c = hand_example();
    // Attribute 0: TP 0.625, FP 0.25, FN 0.375.
    close(c.jaccard(0), 0.625 / 1.25, "jaccard 0");
    close(c.dice(0), 1.25 / 1.875, "dice 0");
    close(c.jaccard(1), 0.0, "jaccard 1");
    close(c.dice(1), 0.0, "dice 1");
    close(c.jaccard(2), 1.0, "jaccard 2");
    close(c.dice(2), 1.0, "dice 2");
    assert!(!c.is_vacuous(2) && c.is_vacuous(3) && c.is_vacuous(4));
    close(c.jaccard(3), 1.0, "vacuous jaccard");
    close(c.dice(4), 1.0, "vacuous dice");
    // Micro: TP 0.875, FP 0.375, FN 0.375.
    close(c.micro_jaccard(), 7.0 / 13.0, "micro jaccard");
    close(c.micro_dice(), 1.75 / 2.5, "micro dice");
    close(c.mean_jaccard(), (0.5 + 0.0 + 1.0 + 1.0 + 1.0) / 5.0, "mean jaccard");
    assert_eq!(c.images, [2; 5]);
    assert_eq!(c.nonempty_truth, [2, 0, 1, 0, 0]);
}

#[test]
fn empty_attributes() {
    let c = hand_example();
    // The micro score sums counts: vacuous attributes add zeros, so leaving them out
    // entirely changes nothing.
    let without = hand_example_upto(3);
    close(without.micro_jaccard(), c.micro_jaccard(), "micro without vacuous attributes");
    // Never scored: undefined and out of the mean.
    assert!(without.jaccard(3).is_nan() && without.dice(4).is_nan() && !without.is_vacuous(3));
    close(without.mean_jaccard(), 0.5, "mean over scored attributes");
    assert!(Counts::new().micro_jaccard().is_nan() && Counts::new().mean_jaccard().is_nan());
    assert_eq!(metrics::fmt_score(f64::NAN), "n/a");
    // Bad input is an error, not a panic.
    assert!(Counts::new().add_image(5, &[true], &[true]).is_err());
    assert!(Counts::new().add_image(0, &[true, false], &[true]).is_err());
    assert!(Counts::new().add_image::<bool, bool>(0, &[], &[]).is_err());
}

#[test]
fn random_masks_match_a_direct_implementation() {
    let mut rng = common::rng();
    let mut c = Counts::new();
    // Per attribute: Σ over images of |T∩P|/N, (|P|−|T∩P|)/N, (|T|−|T∩P|)/N.
    let mut sums = [[0.0f64; 3]; K];
    for _ in 0..12 {
        let (w, h) = (rng.gen_range(1..40), rng.gen_range(1..40));
        for (k, sum) in sums.iter_mut().enumerate() {
            let density: f64 = rng.gen_range(0.0..0.5);
            let t: Vec<u8> = (0..w * h)
                .map(|_| if rng.gen_bool(density) { rng.gen_range(129..=255) } else { rng.gen_range(0..=128) })
                .collect();
            let p: Vec<u8> =
                (0..w * h).map(|_| if rng.gen_bool(density) { 255 } else { rng.gen_range(0..=128) }).collect();
            c.add_image(k, &t, &p).unwrap();
            let ts: std::collections::HashSet<usize> = (0..w * h).filter(|&i| t[i] > 128).collect();
            let ps: std::collections::HashSet<usize> = (0..w * h).filter(|&i| p[i] > 128).collect();
            let inter = ts.intersection(&ps).count() as f64;
            let n = (w * h) as f64;
            sum[0] += inter / n;
            sum[1] += (ps.len() as f64 - inter) / n;
            sum[2] += (ts.len() as f64 - inter) / n;
        }
    }
    let jac = |s: [f64; 3]| if s.iter().sum::<f64>() == 0.0 { 1.0 } else { s[0] / (s[0] + s[1] + s[2]) };
    for (k, s) in sums.iter().enumerate() {
        assert!((c.jaccard(k) - jac(*s)).abs() <= 1e-9, "attribute {k}: {} vs {}", c.jaccard(k), jac(*s));
        let dice = if s.iter().sum::<f64>() == 0.0 { 1.0 } else { 2.0 * s[0] / (2.0 * s[0] + s[1] + s[2]) };
        assert!((c.dice(k) - dice).abs() <= 1e-9, "dice {k}");
    }
    let total = sums.iter().fold([0.0; 3], |a, s| [a[0] + s[0], a[1] + s[1], a[2] + s[2]]);
    assert!((c.micro_jaccard() - jac(total)).abs() <= 1e-9, "micro");
    let mean = sums.iter().map(|s| jac(*s)).sum::<f64>() / K as f64;
    assert!((c.mean_jaccard() - mean).abs() <= 1e-9, "mean");
}

#[test]
fn auc_matches_pair_counting_with_ties() {
    // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75.
    close(metrics::roc_auc(&[0.1f32, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap(), 0.75, "sklearn example");
    let mut rng = common::rng();
    for trial in 0..50 {
        let n = rng.gen_range(2..60);
        // Few distinct values: many ties, across and within classes.
        let scores: Vec<f64> = (0..n).map(|_| f64::from(rng.gen_range(-3i32..4)) * 0.5).collect();
        let labels: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.4)).collect();
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in (0..n).filter(|&i| labels[i]) {
            for j in (0..n).filter(|&j| !labels[j]) {
                pairs += 1.0;
                wins += if scores[i] > scores[j] {
                    1.0
                } else if scores[i] == scores[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let got = metrics::auc(&scores, &labels);
        if pairs == 0.0 {
            assert!(got.is_nan(), "trial {trial}: one class only must be n/a");
        } else {
            assert!((got - wins / pairs).abs() <= 1e-12, "trial {trial}: {got} vs {}", wins / pairs);
        }
    }
    assert!(metrics::auc(&[1.0, 2.0], &[true, true]).is_nan());
    assert!(metrics::roc_auc(&[1.0f32], &[true, false]).is_err());
}

#[test]
fn training_metrics_agree_with_the_scorer() {
    let mut rng = common::rng();
    let (n, h, w) = (3, 5, 7);
    let logits = common::uniform(&mut rng, n * h * w * K).iter().map(|v| v * 3.0).collect::<Vec<_>>();
    let targets: Vec<f32> =
        (0..n * h * w * K).map(|i| f32::from(u8::from(rng.gen_bool(if i % 5 == 2 { 0.0 } else { 0.3 })))).collect();
    let counts = metrics::mask_counts(&logits, &targets, n, h, w, 0.3).unwrap();
    let mut want = Counts::new();
    for img in 0..n {
        for k in 0..K {
            let at = |i: usize| (img * h * w + i) * K + k;
            let truth: Vec<bool> = (0..h * w).map(|i| targets[at(i)] > 0.5).collect();
            let pred: Vec<bool> = (0..h * w).map(|i| 1.0 / (1.0 + (-f64::from(logits[at(i)])).exp()) > 0.3).collect();
            want.add_image(k, &truth, &pred).unwrap();
        }
    }
    for k in 0..K {
        assert!((counts.jaccard(k) - want.jaccard(k)).abs() <= 1e-12, "attribute {k}");
    }
    assert_eq!(counts.images, want.images);
    let present = metrics::presence(&targets, n, h, w).unwrap();
    assert!(present.iter().all(|y| !y[2]), "channel 2 has no foreground");

    // Two half batches accumulate to the whole.
    let heads = common::uniform(&mut rng, n * K);
    let mut acc = ScoreAccumulator::new(0.3).unwrap();
    let split = h * w * K;
    acc.add_batch(&logits[..split], &heads[..K], &heads[..K], &targets[..split], 1, h, w).unwrap();
    acc.add_batch(&logits[split..], &heads[K..], &heads[K..], &targets[split..], 2, h, w).unwrap();
    let scores = acc.finish().unwrap();
    assert_eq!(acc.images(), n);
    for k in 0..K {
        assert!((scores.counts.jaccard(k) - counts.jaccard(k)).abs() <= 1e-12);
    }
    assert!(scores.auc_mid[2].is_nan(), "attribute never present: AUC n/a");
    assert!(scores.table().contains("n/a") && scores.table().contains("paper"));
    assert!(acc.add_batch(&logits, &heads, &heads, &targets, n, h, w + 1).is_err());
    assert!(ScoreAccumulator::new(1.0).is_err());
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-metrics-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `w`×`h` 0/255 mask with a pseudo-random blob pattern.
fn mask(rng: &mut impl Rng, w: u32, h: u32) -> Vec<u8> {
    let (cx, cy, r) = (rng.gen_range(0..w) as i64, rng.gen_range(0..h) as i64, rng.gen_range(1..w.max(2)) as i64);
    (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as i64, (i / w) as i64);
            if (x - cx).pow(2) + (y - cy).pow(2) < r * r {
                255
            } else {
                0
            }
        })
        .collect()
}

/// Saves `m` in one of several PNG flavours (all meaning the same binary mask).
fn save_mask(path: &Path, m: &[u8], w: u32, h: u32, flavour: usize) {
    match flavour % 4 {
        0 => GrayImage::from_raw(w, h, m.to_vec()).unwrap().save(path).unwrap(),
        1 => RgbImage::from_fn(w, h, |x, y| Rgb([m[(y * w + x) as usize]; 3])).save(path).unwrap(),
        2 => RgbaImage::from_fn(w, h, |x, y| {
            Rgba([m[(y * w + x) as usize], m[(y * w + x) as usize], m[(y * w + x) as usize], 255])
        })
        .save(path)
        .unwrap(),
        _ => ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(w, h, |x, y| Luma([u16::from(m[(y * w + x) as usize]) * 257]))
            .save(path)
            .unwrap(),
    }
}

#[test]
fn eval_scores_folders_and_reports_problems() {
    let mut rng = common::rng();
    let root = temp_dir("eval");
    let (truth, pred) = (root.join("truth/ISIC2018_Task2_Training_GroundTruth_v3"), root.join("pred"));
    std::fs::create_dir_all(&truth).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::write(truth.join("LICENSE.txt"), "not a mask").unwrap();
    let sizes = [(31, 17), (20, 20), (9, 40), (13, 11), (25, 6)];
    let mut want = Counts::new();
    let mut names = Vec::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        for (k, attr) in ATTRIBUTES.iter().enumerate() {
            let name = format!("ISIC_{i:07}_attribute_{attr}.png");
            let t = mask(&mut rng, w, h);
            let p = mask(&mut rng, w, h);
            save_mask(&truth.join(&name), &t, w, h, i + k);
            save_mask(&pred.join(&name), &p, w, h, i + k + 1);
            want.add_image(k, &t, &p).unwrap();
            names.push(name);
        }
    }
    let json = root.join("report.json");
    let report = eval::run(&pred, &root.join("truth"), Some(&json)).unwrap();
    assert_eq!((report.images, report.pairs, report.unmatched_predictions), (5, 25, 0));
    for k in 0..K {
        assert!((report.counts.jaccard(k) - want.jaccard(k)).abs() <= 1e-12, "attribute {k}");
        assert_eq!(report.counts.nonempty_truth[k], want.nonempty_truth[k]);
    }
    assert!((report.counts.micro_jaccard() - want.micro_jaccard()).abs() <= 1e-12);
    let table = eval::format_table(&report);
    println!("{table}");
    assert!(table.contains("micro-averaged Jaccard") && table.contains("the paper's validation number"));
    // The prediction folder inside the searched truth folder is not mistaken for truth.
    assert_eq!(eval::run(&pred, &root, None).unwrap().pairs, 25);
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.contains("\"micro_average\"") && text.contains("\"streaks\""), "{text}");

    // A prediction of the wrong size: the error names the file and both sizes.
    let bad = &names[7];
    GrayImage::new(3, 3).save(pred.join(bad)).unwrap();
    let err = eval::run(&pred, &truth, None).unwrap_err().to_string();
    assert!(err.contains(bad.as_str()) && err.contains("3x3") && err.contains("20x20"), "{err}");

    // Missing predictions: all named when few, the first 20 and a count when many.
    for name in &names[..3] {
        std::fs::remove_file(pred.join(name)).unwrap();
    }
    let err = eval::run(&pred, &truth, None).unwrap_err().to_string();
    assert!(names[..3].iter().all(|n| err.contains(n.as_str())) && err.contains("3 of 25"), "{err}");
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = eval::run(&empty, &truth, None).unwrap_err().to_string();
    assert!(err.contains("25 of 25") && err.contains("and 5 more") && err.contains(names[0].as_str()), "{err}");
    assert!(!err.contains(names[24].as_str()), "only the first 20 listed: {err}");

    // No truth at all.
    assert!(eval::run(&pred, &empty, None).is_err());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn raw_counts_and_names() {
    let r = RawCounts::of(&[true, true, false, false], &[true, false, true, false]).unwrap();
    assert_eq!((r.tp, r.fp, r.fn_, r.tn, r.pixels()), (1, 1, 1, 1, 4));
    assert_eq!(eval::parse_mask_name("ISIC_0000001_attribute_milia_like_cyst.png"), Some(("ISIC_0000001", 3)));
    assert_eq!(eval::parse_mask_name("ISIC_0000001_attribute_freckles.png"), None);
    assert_eq!(eval::parse_mask_name("ISIC_0000001.png"), None);
}

#[test]
fn training_curves_plot() {
    let dir = temp_dir("plot");
    let path = dir.join("curves.png");
    let epochs = |f: &dyn Fn(f64) -> f64| (1..=30).map(|e| (e as f64, f(e as f64))).collect::<Vec<_>>();
    let mut val_loss = epochs(&|e| 1.2 / e.sqrt() + 0.2 + 0.03 * (e * 1.7).sin());
    val_loss[4].1 = f64::NAN;
    lesionseg::plot::plot_training(
        &path,
        &epochs(&|e| 1.5 / e.sqrt() + 0.1),
        &val_loss,
        &epochs(&|e| 0.45 * (1.0 - (-e / 8.0).exp())),
        &epochs(&|e| 0.38 * (1.0 - (-e / 9.0).exp())),
    )
    .unwrap();
    let img = image::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (lesionseg::plot::WIDTH, lesionseg::plot::HEIGHT));
    // One point per series, and a series that is all NaN: still a readable figure.
    let one = [(1.0, 0.7)];
    let none = [(1.0, f64::NAN)];
    lesionseg::plot::plot_training(&dir.join("first.png"), &one, &one, &none, &[(1.0, 0.1)]).unwrap();
    let series = [lesionseg::plot::Series::new("empty", "nothing", [0, 0, 0], vec![])];
    lesionseg::plot::plot_curves(&dir.join("empty.png"), "empty", &series).unwrap();
    if std::env::var_os("LESIONSEG_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `eval` sums in the official scorer's order, to the last bit: the official code
/// (isic-challenge-scoring's `task2.score`) sums the normalised counts of every
/// (attribute, image) row at once, one after another in the order of the sorted
/// truth file names; per attribute it sums that attribute's rows in the same order.
/// Transcribed here on random sizes and masks, compared bit for bit.
#[test]
fn eval_sums_in_the_official_order_bit_for_bit() {
    let mut rng = common::rng();
    let root = temp_dir("order");
    let (truth, pred) = (root.join("truth"), root.join("pred"));
    std::fs::create_dir_all(&truth).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    let mut rows = Vec::new();
    for i in 0..40 {
        let (w, h) = (rng.gen_range(3..60), rng.gen_range(3..60));
        for attr in ATTRIBUTES {
            let name = format!("ISIC_{:07}_attribute_{attr}.png", 3 * i + 1);
            let (t, p) = (mask(&mut rng, w, h), mask(&mut rng, w, h));
            save_mask(&truth.join(&name), &t, w, h, 0);
            save_mask(&pred.join(&name), &p, w, h, 0);
            rows.push((name, metrics::attribute_index(attr).unwrap(), RawCounts::of(&t, &p).unwrap()));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    // [tp, fp, fn] sums: over everything, and per attribute, in row order.
    let (mut all, mut per) = ([0.0f64; 3], [[0.0f64; 3]; K]);
    for (_, k, r) in &rows {
        let px = r.pixels() as f64;
        for (j, v) in [r.tp, r.fp, r.fn_].into_iter().enumerate() {
            all[j] += v as f64 / px;
            per[*k][j] += v as f64 / px;
        }
    }
    let jaccard = |s: [f64; 3]| s[0] / (s[0] + s[1] + s[2]);
    let dice = |s: [f64; 3]| (2.0 * s[0]) / ((2.0 * s[0]) + s[1] + s[2]);
    let report = eval::run(&pred, &truth, None).unwrap();
    let c = &report.counts;
    for k in 0..K {
        assert_eq!(c.jaccard(k).to_bits(), jaccard(per[k]).to_bits(), "{} Jaccard", ATTRIBUTES[k]);
        assert_eq!(c.dice(k).to_bits(), dice(per[k]).to_bits(), "{} Dice", ATTRIBUTES[k]);
    }
    assert_eq!(
        c.micro_jaccard().to_bits(),
        jaccard(all).to_bits(),
        "micro Jaccard {} vs {}",
        c.micro_jaccard(),
        jaccard(all)
    );
    assert_eq!(c.micro_dice().to_bits(), dice(all).to_bits(), "micro Dice {} vs {}", c.micro_dice(), dice(all));
    let _ = std::fs::remove_dir_all(&root);
}
