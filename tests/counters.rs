//! The access tracer (`Emu::traced`) on planted kernels with known behaviour
//! (`kernels/testing.cu`): the counters must be exact, and the planted race must be
//! named with its source lines.

use lesionseg::backend::cuda::{Arg, Executor, Geometry, Kernel};
use lesionseg::backend::emu::counters::Counters;
use lesionseg::backend::emu::trace::{self, AccessKind, LaunchTrace, RaceKind, Sampling, TraceConfig};
use lesionseg::backend::emu::Emu;

const TESTING_CU: &str = include_str!("../kernels/testing.cu");

fn traced() -> Emu {
    Emu::traced(TraceConfig { sampling: Sampling::All, races: true })
}

/// Runs one testing.cu kernel on a traced emulator and returns its trace.
fn run(e: &Emu, name: &'static str, grid: u32, block: u32, args: &[Arg]) -> LaunchTrace {
    let g = Geometry { grid: [grid, 1, 1], block: [block, 1, 1], smem_bytes: 0 };
    e.launch(Kernel { module: "testing", name }, &g, args).unwrap();
    let mut t = e.take_traces();
    assert_eq!(t.len(), 1);
    t.pop().unwrap()
}

/// 1-based line of testing.cu containing `marker`.
fn line_of(marker: &str) -> usize {
    1 + TESTING_CU.lines().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("no `{marker}` in testing.cu"))
}

#[test]
fn shared_word_strides_give_1_2_and_32_way_conflicts() {
    for stride in [1, 2, 32] {
        let e = traced();
        let out = e.alloc(32).unwrap();
        let t = run(&e, "test_bank_stride", 1, 32, &[Arg::Ptr(e.addr(&out)), Arg::I32(stride)]);
        let c = Counters::of(&t, false);
        // The fill: 32 stride-1 store requests, one wavefront each.
        assert_eq!((c.shared_store.requests, c.shared_store.wavefronts, c.shared_store.ideal), (32.0, 32.0, 32.0));
        // The read: one request, `stride` distinct words in one bank.
        let s = f64::from(stride);
        assert_eq!((c.shared_load.requests, c.shared_load.wavefronts, c.shared_load.ideal), (1.0, s, 1.0));
        assert_eq!(c.shared_load.degree(), Some(s), "stride {stride}");
        assert_eq!((c.global_store.requests, c.global_store.sectors, c.global_store.ideal), (1.0, 4.0, 4.0));
        assert!(t.races.is_empty(), "{:?}", t.races);
        let mut v = vec![0.0; 32];
        e.download(&out, 0, &mut v).unwrap();
        assert!(v.iter().enumerate().all(|(i, &x)| x == ((i as i32 * stride) & 1023) as f32), "{v:?}");
    }
}

#[test]
fn coalesced_and_strided_copies() {
    for (stride, sectors, unique_read) in [(1, 128.0, 4096.0), (32, 1024.0, 32768.0)] {
        let e = traced();
        let n = 1024;
        let input = e.alloc(n * stride).unwrap();
        let out = e.alloc(n).unwrap();
        let args = [Arg::Ptr(e.addr(&out)), Arg::Ptr(e.addr(&input)), Arg::I32(n as i32), Arg::I32(stride as i32)];
        let t = run(&e, "test_global_copy", 4, 256, &args);
        let c = Counters::of(&t, false);
        // 1024 floats: 32 warp requests each way; 128 bytes asked per request.
        assert_eq!((c.global_load.requests, c.global_load.sectors, c.global_load.ideal), (32.0, sectors, 128.0));
        assert_eq!(c.global_load.efficiency(), Some(128.0 / sectors), "stride {stride}");
        assert_eq!((c.global_store.requests, c.global_store.sectors), (32.0, 128.0));
        assert_eq!(c.global_store.efficiency(), Some(1.0));
        assert_eq!((c.unique_read, c.unique_written), (unique_read, 4096.0));
        assert_eq!((t.mma, t.barriers, t.sampled, t.blocks), (0.0, 0.0, 4, 4));
        assert!(t.sites.iter().all(|s| !s.main_loop && s.kind.global()));
    }
}

#[test]
fn planted_race_is_named_with_its_lines() {
    let e = traced();
    let out = e.alloc(64).unwrap();
    let t = run(&e, "test_shared_race", 1, 64, &[Arg::Ptr(e.addr(&out))]);
    assert!(!t.races.is_empty(), "the planted race was not found");
    let pcs: Vec<u64> = t.races.iter().flat_map(|r| [r.first.1, r.second.1]).collect();
    let names = trace::symbolize(&pcs);
    let (write, read) = (line_of("planted race, the write"), line_of("planted race, the read"));
    let r = &t.races[0];
    assert_eq!(r.array, "cell");
    // Thread t reads cell[t ^ 32] of the other warp: the first pair seen in forward
    // order is thread 0's read of cell[32], then thread 32's write of it.
    assert_eq!((r.kind, r.first.0, r.second.0, r.offset), (RaceKind::ReadWrite, 0, 32, 128));
    let first = names[&r.first.1].join(" / ");
    let second = names[&r.second.1].join(" / ");
    assert!(first.contains(&format!("kernels/testing.cu:{read}")), "read side: {first}");
    assert!(second.contains(&format!("kernels/testing.cu:{write}")), "write side: {second}");
    assert!(t.races.iter().any(|r| r.kind == RaceKind::WriteRead));
    println!("planted race found: {} then {}", first, second);
}

#[test]
fn synchronised_shared_memory_is_not_a_race() {
    // test_neighbour with its barrier, and test_ldmatrix (a __syncwarp between the
    // warp's stores and its ldmatrix loads): no races; without the barrier: races.
    for (barrier, races) in [(1, false), (0, true)] {
        let e = traced();
        let out = e.alloc(512).unwrap();
        let t = run(&e, "test_neighbour", 2, 256, &[Arg::Ptr(e.addr(&out)), Arg::I32(barrier)]);
        assert_eq!(!t.races.is_empty(), races, "barrier {barrier}: {:?}", t.races);
    }
    let e = traced();
    let out = e.alloc(256).unwrap();
    let t = run(&e, "test_ldmatrix", 1, 32, &[Arg::Ptr(e.addr(&out)), Arg::I32(0)]);
    assert!(t.races.is_empty(), "{:?}", t.races);
    // Rows 48 bytes apart: the eight rows of each matrix in distinct banks.
    let c = Counters::of(&t, false);
    assert_eq!((c.ldmatrix.requests, c.ldmatrix.wavefronts, c.ldmatrix.ideal), (1.0, 4.0, 4.0));
    assert!(t.sites.iter().any(|s| s.kind == AccessKind::Ldmatrix));
}

#[test]
fn cp_async_is_traced_on_both_sides() {
    let e = traced();
    let n = 256usize;
    let input = e.alloc(n).unwrap();
    let (out, stale) = (e.alloc(n).unwrap(), e.alloc(n).unwrap());
    let g = Geometry { grid: [1, 1, 1], block: [64, 1, 1], smem_bytes: 4 * n as u32 };
    let args = [Arg::Ptr(e.addr(&out)), Arg::Ptr(e.addr(&stale)), Arg::Ptr(e.addr(&input)), Arg::I32(n as i32)];
    e.launch(Kernel { module: "testing", name: "test_cp_async" }, &g, &args).unwrap();
    let t = e.take_traces().pop().unwrap();
    let c = Counters::of(&t, false);
    // 64 copies of 16 bytes in two groups: per group one 32-lane request (4 quarter-
    // warp wavefronts of 128 contiguous bytes), from 512 contiguous global bytes.
    assert_eq!((c.async_store.requests, c.async_store.wavefronts, c.async_store.ideal), (2.0, 8.0, 8.0));
    let async_loads: f64 = t.sites.iter().filter(|s| s.kind == AccessKind::AsyncLoad).map(|s| s.sectors).sum();
    assert_eq!(async_loads, 32.0);
    // The kernel reads `stale` before its waits, on purpose: other threads' copies
    // land there, a race the tracer must see (cp.async writes count from the issue).
    assert!(!t.races.is_empty() && t.races.iter().all(|r| r.kind == RaceKind::WriteRead), "{:?}", t.races);
    assert_eq!(t.races[0].array, "dynamic shared memory");
}

#[test]
fn untraced_emulator_keeps_no_trace() {
    let e = Emu::new();
    let out = e.alloc(32).unwrap();
    let g = Geometry { grid: [1, 1, 1], block: [32, 1, 1], smem_bytes: 0 };
    e.launch(Kernel { module: "testing", name: "test_bank_stride" }, &g, &[Arg::Ptr(e.addr(&out)), Arg::I32(2)])
        .unwrap();
    assert!(e.take_traces().is_empty());
}
