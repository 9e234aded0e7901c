//! The emulator follows the PTX rules a kernel could otherwise break unnoticed in
//! `cargo test` (the test kernels of `kernels/testing_ptx.cu`): shuffle lane operands
//! are read as their low five bits, and a launch of more threads a block than the
//! kernel's launch bounds is refused, as the driver refuses it.

use lesionseg::backend::cuda::{Arg, Executor, Geometry, Kernel};
use lesionseg::backend::emu::Emu;

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "testing_ptx", name }
}

/// One block of `threads` threads in x.
fn block(threads: u32) -> Geometry {
    Geometry { grid: [1, 1, 1], block: [threads, 1, 1], smem_bytes: 0 }
}

#[test]
fn shuffle_lane_operands_use_their_low_five_bits() {
    let e = Emu::new();
    let out = e.alloc(64 * 8).unwrap();
    e.launch(kernel("test_lane_bits"), &block(64), &[Arg::Ptr(e.addr(&out))]).unwrap();
    let mut got = vec![0.0; 64 * 8];
    e.download(&out, 0, &mut got).unwrap();
    let v = |tid: usize| (3 * tid + 1) as f32;
    for tid in 0..64 {
        let (lane, base) = (tid % 32, tid / 32 * 32);
        let want = [
            v(base + (lane + 1) % 32),
            v(base + lane / 8 * 8 + 7),
            v(base + 31),
            v(base + (lane ^ 1)),
            if lane + 2 < 32 { v(tid + 2) } else { v(tid) },
            if lane >= 3 { v(tid - 3) } else { v(tid) },
            v(tid),
            5.0,
        ];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(got[8 * tid + k], *w, "thread {tid} output {k}");
        }
    }
}

#[test]
fn launch_bounds_are_enforced() {
    let e = Emu::new();
    let out = e.alloc(128).unwrap();
    let args = [Arg::Ptr(e.addr(&out))];
    e.launch(kernel("test_bounded"), &block(64), &args).unwrap();
    let err = e.launch(kernel("test_bounded"), &block(96), &args).unwrap_err().to_string();
    assert!(err.contains("block of 96 threads") && err.contains("launch bounds allow at most 64"), "{err}");
    // A kernel without bounds takes up to the hardware's 1024.
    let err = e.launch(kernel("test_lane_bits"), &block(1056), &args).unwrap_err().to_string();
    assert!(err.contains("1056"), "{err}");
}
