//! The host emulator itself, through the test kernels of `kernels/testing.cu`: it must
//! catch the planted bugs (a missing barrier, an out-of-bounds write, a deadlock, a
//! read of a non-participating lane, a shared-memory overrun, a failed assertion) and
//! reproduce the primitives exactly (shuffles, votes, mma and ldmatrix fragment
//! layouts, cp.async, bf16/f16 conversions).

use half::{bf16, f16};
use lesionseg::backend::cuda::{Arg, Executor, Geometry, Kernel};
use lesionseg::backend::emu::{race_check, Emu, EmuMem};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "testing", name }
}

fn geom(grid: [u32; 3], block: [u32; 3], smem_bytes: u32) -> Geometry {
    Geometry { grid, block, smem_bytes }
}

/// One block of `threads` threads in x.
fn block(threads: u32) -> Geometry {
    geom([1, 1, 1], [threads, 1, 1], 0)
}

fn buffer(e: &Emu, data: &[f32]) -> EmuMem {
    let m = e.alloc(data.len()).unwrap();
    e.upload(&m, 0, data).unwrap();
    m
}

fn read(e: &Emu, m: &EmuMem) -> Vec<f32> {
    let mut v = vec![0.0; e.len(m)];
    e.download(m, 0, &mut v).unwrap();
    v
}

fn ptr(e: &Emu, m: &EmuMem) -> Arg {
    Arg::Ptr(e.addr(m))
}

/// Launches and expects an error containing every one of `needles`.
fn expect_err(e: &Emu, name: &'static str, g: Geometry, args: &[Arg], needles: &[&str]) -> String {
    let err = e.launch(kernel(name), &g, args).expect_err("the emulator must report this launch").to_string();
    for n in needles {
        assert!(err.contains(n), "error of {name} should mention `{n}`: {err}");
    }
    err
}

#[test]
fn missing_barrier_is_a_difference_between_schedules() {
    let run = |use_barrier: i32| {
        race_check(|be| {
            let e = &be.exec;
            let out = e.alloc(512)?;
            e.launch(
                kernel("test_neighbour"),
                &geom([2, 1, 1], [256, 1, 1], 0),
                &[ptr(e, &out), Arg::I32(use_barrier)],
            )?;
            Ok(read(e, &out))
        })
        .unwrap()
    };
    let racy = run(0);
    assert!(!racy.identical(), "a missing barrier must change the result between schedules");
    let err = racy.check(0.0).unwrap_err().to_string();
    assert!(err.contains("differ"), "{err}");

    let fixed = run(1);
    fixed.check(0.0).unwrap();
    for (i, v) in fixed.output().iter().enumerate() {
        let (b, t) = (i / 256, i % 256);
        assert_eq!(*v, ((t + 1) % 256 + 1000 * b) as f32, "element {i}");
    }
}

#[test]
fn out_of_bounds_write_is_caught_by_the_guards() {
    let e = Emu::new();
    let out = e.alloc(100).unwrap();
    let err = expect_err(
        &e,
        "test_oob_write",
        block(128),
        &[ptr(&e, &out), Arg::I32(100)],
        &["test_oob_write", "past the end", "100 elements", "argument 0"],
    );
    eprintln!("{err}");
    // In bounds, and the guards were restored: no error.
    e.launch(kernel("test_oob_write"), &block(128), &[ptr(&e, &out), Arg::I32(99)]).unwrap();
    assert!(read(&e, &out).iter().all(|&v| v == 1.0));
}

fn random_matrix(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

#[test]
fn mma_matches_an_f64_product_of_rounded_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for f16_variant in [0, 1] {
        let round = |x: f32| if f16_variant == 1 { f16::from_f32(x).to_f64() } else { bf16::from_f32(x).to_f64() };
        for trial in 0..4 {
            let (a, b, c) = (random_matrix(&mut rng, 256), random_matrix(&mut rng, 128), random_matrix(&mut rng, 128));
            let e = Emu::new();
            let (ma, mb, mc, md) = (buffer(&e, &a), buffer(&e, &b), buffer(&e, &c), e.alloc(128).unwrap());
            let args = [ptr(&e, &md), ptr(&e, &ma), ptr(&e, &mb), ptr(&e, &mc), Arg::I32(f16_variant)];
            e.launch(kernel("test_mma"), &block(32), &args).unwrap();
            let d = read(&e, &md);
            for i in 0..16 {
                for j in 0..8 {
                    let (mut want, mut scale) = (f64::from(c[i * 8 + j]), f64::from(c[i * 8 + j].abs()));
                    for k in 0..16 {
                        let p = round(a[i * 16 + k]) * round(b[k * 8 + j]);
                        want += p;
                        scale += p.abs();
                    }
                    let got = f64::from(d[i * 8 + j]);
                    assert!(
                        (got - want).abs() <= 1e-6 * scale + 1e-30,
                        "mma f16={f16_variant} trial {trial} D[{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn ldmatrix_gives_the_ptx_fragments() {
    for (mode, count, trans) in [(0, 4, false), (1, 2, false), (2, 4, true), (3, 2, true)] {
        let e = Emu::new();
        let out = e.alloc(32 * 4 * 2).unwrap();
        e.launch(kernel("test_ldmatrix"), &block(32), &[ptr(&e, &out), Arg::I32(mode)]).unwrap();
        let got = read(&e, &out);
        for lane in 0..32 {
            for j in 0..4 {
                for h in 0..2 {
                    // Matrix j is the quadrant at (8(j&1), 8(j>>1)) of tile[r][c] = 16r + c.
                    let (r0, c0) = (8 * (j & 1), 8 * (j >> 1));
                    let (q, c) = (lane / 4, 2 * (lane % 4) + h);
                    let want = match (j < count, trans) {
                        (false, _) => -1.0,
                        (true, false) => (16 * (r0 + q) + c0 + c) as f32,
                        (true, true) => (16 * (r0 + c) + c0 + q) as f32,
                    };
                    assert_eq!(got[(lane * 4 + j) * 2 + h], want, "mode {mode} lane {lane} reg {j} half {h}");
                }
            }
        }
        if mode == 0 {
            // x4 over the four quadrants is exactly the mma A fragment a[0..3].
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                for (j, (row, col)) in
                    [(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)].into_iter().enumerate()
                {
                    assert_eq!(got[(lane * 4 + j) * 2], (16 * row + col) as f32);
                }
            }
        }
    }
}

#[test]
fn cp_async_copies_land_at_the_wait() {
    let e = Emu::new();
    let n = 256;
    let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    let (input, out, stale) = (buffer(&e, &src), e.alloc(n).unwrap(), e.alloc(n).unwrap());
    let args = [ptr(&e, &out), ptr(&e, &stale), ptr(&e, &input), Arg::I32(n as i32)];
    e.launch(kernel("test_cp_async"), &geom([1, 1, 1], [64, 1, 1], 4 * n as u32), &args).unwrap();
    assert_eq!(read(&e, &out), src);
    // Emulator semantics: nothing lands before the wait, so the early reads are NaN.
    assert!(read(&e, &stale).iter().step_by(4).all(|v| v.is_nan()));
}

#[test]
fn shuffles_and_votes_follow_cuda() {
    let e = Emu::new();
    let out = e.alloc(64 * 16).unwrap();
    e.launch(kernel("test_shuffles"), &block(64), &[ptr(&e, &out)]).unwrap();
    let got = read(&e, &out);
    let v = |tid: usize| (3 * tid + 1) as f32;
    for tid in 0..64 {
        let (lane, base) = (tid % 32, tid / 32 * 32);
        let ballot3: u32 = (0..32).filter(|l| l % 3 == 0).map(|l| 1u32 << l).sum();
        let want = [
            v(base + (lane ^ 1)),
            v(base + (lane ^ 5)),
            if lane + 3 < 32 { v(tid + 3) } else { v(tid) },
            if lane >= 2 { v(tid - 2) } else { v(tid) },
            v(base + 7),
            v(base + lane / 8 * 8 + 7),
            if lane % 16 + 3 < 16 { v(tid + 3) } else { v(tid) },
            // Width 16: a later segment is out of reach (own value), an earlier one is not.
            if lane < 16 { v(tid) } else { v(tid - 16) },
            if lane % 8 >= 1 { v(tid - 1) } else { v(tid) },
            (base + 31 - lane) as f32,
            f32::from_bits(ballot3),
            1.0,
            1.0,
            0.0,
            v(base + (lane ^ 1)),
            f32::from_bits(if lane < 16 { 0x0000_aaaa } else { 0xaaaa_0000 }),
        ];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(
                got[16 * tid + k].to_bits(),
                w.to_bits(),
                "thread {tid} output {k}: {} vs {w}",
                got[16 * tid + k]
            );
        }
    }
}

#[test]
fn deadlock_is_reported_not_a_hang() {
    let e = Emu::new();
    let out = e.alloc(32).unwrap();
    let err =
        expect_err(&e, "test_deadlock", block(32), &[ptr(&e, &out)], &["deadlock", "block (0,0,0)", "__syncthreads"]);
    eprintln!("{err}");
}

#[test]
fn reading_a_non_participating_lane_is_reported() {
    let e = Emu::new();
    let out = e.alloc(32).unwrap();
    expect_err(
        &e,
        "test_bad_shuffle",
        block(32),
        &[ptr(&e, &out)],
        &["lanes 0x0000ffff read lanes 0x00100000", "did not participate"],
    );
}

/// Values where rounding to bf16/f16 is delicate, plus random bit patterns.
fn conversion_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc0_1234),
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
        65504.0,
        65519.99,
        65520.0,
        65536.0,
        -65520.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        2f32.powi(-14),
        2f32.powi(-24),
        2f32.powi(-25),
        1.5 * 2f32.powi(-25),
        3.0 * 2f32.powi(-25),
        2f32.powi(-24) * 1023.5,
        2f32.powi(-133),
        f32::from_bits(0x7f7f_8000),
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0x3f80_7fff),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    v.extend((0..20000).map(|_| f32::from_bits(rng.gen())));
    v.extend((0..20000).map(|_| rng.gen_range(-70000.0f32..70000.0) * 2f32.powi(rng.gen_range(-30..1))));
    v
}

#[test]
fn bf16_and_f16_conversions_match_the_half_crate() {
    let e = Emu::new();
    let x = conversion_inputs();
    let n = x.len();
    let (input, out) = (buffer(&e, &x), e.alloc(6 * n).unwrap());
    let g = geom([n.div_ceil(256) as u32, 1, 1], [256, 1, 1], 0);
    e.launch(kernel("test_convert"), &g, &[ptr(&e, &out), ptr(&e, &input), Arg::I32(n as i32)]).unwrap();
    let got = read(&e, &out);
    for (i, &xi) in x.iter().enumerate() {
        let o = &got[6 * i..6 * i + 6];
        let (b, h) = (bf16::from_f32(xi), f16::from_f32(xi));
        if xi.is_nan() {
            // The canonical NaN, as cvt.rn produces (half keeps the payload instead).
            assert_eq!([o[0], o[2], o[4], o[5]], [32767.0; 4], "NaN {:#x}", xi.to_bits());
            assert!(o[1].is_nan() && o[3].is_nan());
            continue;
        }
        let ctx = format!("x = {xi:e} ({:#010x})", xi.to_bits());
        assert_eq!(o[0], f32::from(b.to_bits()), "bf16 bits of {ctx}");
        assert_eq!(o[1].to_bits(), b.to_f32().to_bits(), "bf16 round trip of {ctx}");
        assert_eq!(o[2], f32::from(h.to_bits()), "f16 bits of {ctx}");
        assert_eq!(o[3].to_bits(), h.to_f32().to_bits(), "f16 round trip of {ctx}");
        assert_eq!(o[4], f32::from(b.to_bits()), "pack_bf16x2 low half of {ctx}");
        assert_eq!(o[5], f32::from(h.to_bits()), "pack_f16x2 high half of {ctx}");
    }
}

#[test]
fn every_16_bit_pattern_decodes_as_in_the_half_crate() {
    let e = Emu::new();
    let out = e.alloc(2 * 65536).unwrap();
    e.launch(kernel("test_decode"), &geom([256, 1, 1], [256, 1, 1], 0), &[ptr(&e, &out)]).unwrap();
    let got = read(&e, &out);
    for h in 0..=u16::MAX {
        for (k, want) in [bf16::from_bits(h).to_f32(), f16::from_bits(h).to_f32()].into_iter().enumerate() {
            let g = got[2 * h as usize + k];
            if want.is_nan() {
                assert!(g.is_nan(), "pattern {h:#06x} ({k})");
            } else {
                assert_eq!(g.to_bits(), want.to_bits(), "pattern {h:#06x} ({k})");
            }
        }
    }
}

#[test]
fn failed_assertion_names_the_thread() {
    let e = Emu::new();
    let out = e.alloc(64).unwrap();
    expect_err(&e, "test_assert", block(64), &[ptr(&e, &out), Arg::I32(5)], &["EMU_ASSERT", "thread (5,0,0)"]);
    e.launch(kernel("test_assert"), &block(64), &[ptr(&e, &out), Arg::I32(-1)]).unwrap();
}

#[test]
fn faults_in_a_kernel_are_errors_not_crashes() {
    let e = Emu::new();
    let out = e.alloc(64).unwrap();
    for _ in 0..2 {
        // Twice: the handler must still be armed after the first fault.
        expect_err(&e, "test_wild_write", block(32), &[ptr(&e, &out), Arg::I32(64)], &["SIGSEGV", "thread (3,0,0)"]);
    }
    expect_err(&e, "test_stack_overflow", block(32), &[ptr(&e, &out), Arg::I32(10_000)], &["stack overflow"]);
    // The emulator still works afterwards, on fresh fibers.
    e.launch(kernel("test_stack_overflow"), &block(32), &[ptr(&e, &out), Arg::I32(3)]).unwrap();
    e.launch(kernel("test_assert"), &block(64), &[ptr(&e, &out), Arg::I32(-1)]).unwrap();
}

#[test]
fn shared_array_overrun_is_caught() {
    let e = Emu::new();
    let out = e.alloc(33).unwrap();
    expect_err(&e, "test_shared_overrun", block(33), &[ptr(&e, &out)], &["shared array `small`"]);
}

#[test]
fn unwritten_shared_memory_reads_as_nan_in_every_block() {
    let e = Emu::new();
    let out = e.alloc(128).unwrap();
    e.launch(kernel("test_uninit_shared"), &geom([2, 1, 1], [64, 1, 1], 0), &[ptr(&e, &out)]).unwrap();
    for (i, v) in read(&e, &out).iter().enumerate() {
        let (b, t) = (i / 64, i % 64);
        if t % 2 == 0 {
            assert_eq!(*v, (t + b) as f32);
        } else {
            assert!(v.is_nan(), "block {b} thread {t}: {v}");
        }
    }
}

#[test]
fn early_return_does_not_block_barriers() {
    let e = Emu::new();
    let out = e.alloc(128).unwrap();
    e.launch(kernel("test_early_exit"), &block(128), &[ptr(&e, &out)]).unwrap();
    for (t, v) in read(&e, &out).into_iter().enumerate() {
        assert_eq!(v, if t < 100 { (99 - t) as f32 } else { 0.0 }, "thread {t}");
    }
}

#[test]
fn block_sum_reduces_and_reuses_its_scratch() {
    let (blocks, threads) = (3usize, 256usize);
    let x: Vec<f32> = (0..blocks * threads).map(|i| (i % 17) as f32 - 8.0).collect();
    let report = race_check(|be| {
        let e = &be.exec;
        let (input, out) = (buffer(e, &x), e.alloc(2 * blocks)?);
        e.launch(
            kernel("test_block_sum"),
            &geom([blocks as u32, 1, 1], [threads as u32, 1, 1], 0),
            &[ptr(e, &out), ptr(e, &input)],
        )?;
        Ok(read(e, &out))
    })
    .unwrap();
    report.check(0.0).unwrap();
    for b in 0..blocks {
        let s: f32 = x[b * threads..(b + 1) * threads].iter().sum();
        assert_eq!(report.output()[2 * b..2 * b + 2], [s, 2.0 * s]);
    }
}

#[test]
fn bad_launches_are_errors() {
    let e = Emu::new();
    let out = e.alloc(64).unwrap();
    let p = ptr(&e, &out);
    let unknown = Kernel { module: "testing", name: "no_such_kernel" };
    assert!(e.launch(unknown, &block(32), &[p]).unwrap_err().to_string().contains("no such kernel"));
    let wrong_module = Kernel { module: "conv2d", name: "test_assert" };
    assert!(e.launch(wrong_module, &block(32), &[p, Arg::I32(0)]).is_err());
    for g in [block(2048), geom([0, 1, 1], [32, 1, 1], 0), geom([1, 1, 1], [32, 1, 1], 300 * 1024)] {
        assert!(e.launch(kernel("test_assert"), &g, &[p, Arg::I32(-1)]).is_err(), "{g:?}");
    }
    expect_err(&e, "test_assert", block(32), &[p], &["1 argument(s) given, the kernel takes 2"]);
    expect_err(&e, "test_assert", block(32), &[Arg::I32(0), Arg::I32(0)], &["argument 0 is 4 bytes"]);
    let stale = Arg::Ptr(0x1000);
    expect_err(&e, "test_assert", block(32), &[stale, Arg::I32(-1)], &["not inside any live emu buffer"]);
    assert!(Emu::kernels().any(|k| k == ("testing", "test_mma")));
}

/// Information, not an assertion: what the emulator costs.
#[test]
fn costs_of_a_barrier_and_a_tiled_sgemm() {
    let e = Emu::new();
    let out = e.alloc(256).unwrap();
    let iters = 2000;
    e.launch(kernel("test_sync_cost"), &block(256), &[ptr(&e, &out), Arg::I32(10)]).unwrap(); // warm-up: stacks
    let t = Instant::now();
    e.launch(kernel("test_sync_cost"), &block(256), &[ptr(&e, &out), Arg::I32(iters)]).unwrap();
    let per_barrier = t.elapsed().as_secs_f64() / f64::from(iters);
    eprintln!("emu: one __syncthreads over 256 threads: {:.1} us", per_barrier * 1e6);
    let t = Instant::now();
    e.launch(kernel("test_shuffle_cost"), &block(256), &[ptr(&e, &out), Arg::I32(iters / 5)]).unwrap();
    let per_shuffle = t.elapsed().as_secs_f64() / f64::from(iters);
    eprintln!(
        "emu: one __shfl_xor_sync in each of 8 warps (256 threads): {:.1} us ({:.1}x a barrier)",
        per_shuffle * 1e6,
        per_shuffle / per_barrier
    );

    let n = 128;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (a, b) = (random_matrix(&mut rng, n * n), random_matrix(&mut rng, n * n));
    let run = |e: &Emu| -> lesionseg::Result<Vec<f32>> {
        let (ma, mb, mc) = (buffer(e, &a), buffer(e, &b), e.alloc(n * n)?);
        let g = geom([(n / 16) as u32, (n / 16) as u32, 1], [16, 16, 1], 0);
        let args = [ptr(e, &mc), ptr(e, &ma), ptr(e, &mb), Arg::I32(n as i32), Arg::I32(n as i32), Arg::I32(n as i32)];
        e.launch(kernel("test_sgemm"), &g, &args)?;
        Ok(read(e, &mc))
    };
    let t = Instant::now();
    let c = run(&e).unwrap();
    eprintln!("emu: tiled SGEMM 128x128x128 (64 blocks of 256 threads): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    for i in 0..n {
        for j in 0..n {
            let want: f64 = (0..n).map(|k| f64::from(a[i * n + k]) * f64::from(b[k * n + j])).sum();
            assert!((f64::from(c[i * n + j]) - want).abs() < 1e-3, "C[{i}][{j}]");
        }
    }
    race_check(|be| run(&be.exec)).unwrap().check(0.0).unwrap();
}
