//! Access tracing: the emulator as a profiler. A traced [`super::Emu`] runs the
//! instrumented copy of each kernel (see `trace.cpp` and `build.rs`), which reports
//! every global and shared memory access; per launch it keeps a [`LaunchTrace`]:
//! per instruction (access site) the warp-level requests, the 32-byte sectors they
//! touch against the minimum for their bytes, the shared-memory wavefronts against
//! the ideal, whether it belongs to the main loop; the launch's mma instructions and
//! barriers; the unique bytes read and written (the DRAM lower bound); and every
//! shared-memory race with both instructions.
//!
//! Large launches run a sample of their blocks ([`Sampling::Sample`], the plan in
//! `sample.rs`), each weighted by the blocks it stands for; [`LaunchTrace::sampled`]
//! says how many ran. Untraced emulators never reach this code.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::process::Command;
use std::sync::Mutex;

use super::mem::Alloc;
use super::{sample, EmuEntry, EmuLaunch, EMU_TRACED_ENTRIES};
use crate::backend::cuda::{Arg, Geometry, Kernel};
use crate::error::{Error, Result};

#[repr(C)]
struct EmuTraceRequest {
    nblocks: u32,
    blocks: *const u32,
    weights: *const f64,
    nbufs: u32,
    bufs: *const u64,
    races: u32,
    footprints: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct EmuSite {
    pc: u64,
    kind: u32,
    size: u32,
    main_loop: u32,
    pad: u32,
    requests: f64,
    lanes: f64,
    sectors: f64,
    ideal: f64,
    wavefronts: f64,
    bytes: f64,
}

#[repr(C)]
struct EmuRace {
    pc_first: u64,
    pc_second: u64,
    tid_first: u32,
    tid_second: u32,
    block: [u32; 3],
    offset: u32,
    kind: u32,
    array: *const c_char,
}

#[repr(C)]
#[derive(Default)]
struct EmuTraceTotals {
    mma: f64,
    barriers: f64,
    blocks: f64,
    nsites: u32,
    nraces: u32,
    races_total: u32,
    nfootprints: u32,
}

#[repr(C)]
struct EmuFootprint {
    block: [u32; 3],
    n: u32,
    sectors: *const u64,
}

extern "C" {
    fn emu_trace_begin(req: *const EmuTraceRequest);
    fn emu_trace_end(out: *mut EmuTraceTotals);
    fn emu_trace_sites() -> *const EmuSite;
    fn emu_trace_races() -> *const EmuRace;
    fn emu_trace_footprints() -> *const EmuFootprint;
    fn emu_pc_module(pc: u64, offset: *mut u64, path: *mut c_char, path_len: u32) -> i32;
}

/// Which blocks of each launch a traced emulator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// Every block: exact counters (and the launch's outputs, as untraced).
    All,
    /// Every block of launches of at most this many blocks; a sample of corner,
    /// edge and interior blocks (and each split-K slice kind) of larger ones, scaled.
    /// Outputs of a sampled launch are incomplete.
    Sample(u64),
}

/// What a traced emulator records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// Which blocks run.
    pub sampling: Sampling,
    /// Check shared memory for races (costs a shadow byte per shared byte).
    pub races: bool,
}

/// What kind of access an instruction makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessKind {
    /// A global load (LDG).
    GlobalLoad,
    /// A global store (STG).
    GlobalStore,
    /// A shared-memory load (LDS).
    SharedLoad,
    /// A shared-memory store (STS).
    SharedStore,
    /// `ldmatrix` (LDSM): 8x8 matrices of 16-byte rows from shared memory.
    Ldmatrix,
    /// `cp.async`, its shared-memory store (the LDGSTS destination).
    AsyncStore,
    /// `cp.async`, its global load (the LDGSTS source).
    AsyncLoad,
}

impl AccessKind {
    fn from_raw(k: u32) -> AccessKind {
        match k {
            0 => AccessKind::GlobalLoad,
            1 => AccessKind::GlobalStore,
            2 => AccessKind::SharedLoad,
            3 => AccessKind::SharedStore,
            4 => AccessKind::Ldmatrix,
            5 => AccessKind::AsyncStore,
            _ => AccessKind::AsyncLoad,
        }
    }

    /// Whether it moves global memory.
    pub fn global(self) -> bool {
        matches!(self, AccessKind::GlobalLoad | AccessKind::GlobalStore | AccessKind::AsyncLoad)
    }
}

/// The counters of one instruction (access site) of a launch, scaled to the whole grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// The instruction's address in the traced build (see [`symbolize`]).
    pub pc: u64,
    /// Its kind.
    pub kind: AccessKind,
    /// Bytes per lane.
    pub size: u32,
    /// Executed in two or more barrier intervals of one block: in the main loop.
    pub main_loop: bool,
    /// Warp-level requests.
    pub requests: f64,
    /// Lane accesses.
    pub lanes: f64,
    /// Global: 32-byte sectors touched.
    pub sectors: f64,
    /// Global: the minimum sectors for the bytes asked; shared: ideal wavefronts.
    pub ideal: f64,
    /// Shared: wavefronts.
    pub wavefronts: f64,
    /// Unique bytes per request, summed.
    pub bytes: f64,
}

/// Which accesses of a race came in which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaceKind {
    /// A read, then a write by another thread.
    ReadWrite,
    /// A write, then a read by another thread.
    WriteRead,
    /// Two writes by different threads.
    WriteWrite,
}

/// Two threads of one block touching one shared-memory byte between the same two
/// barriers, at least one writing (and, in one warp, no `__syncwarp` between).
#[derive(Clone, Debug, PartialEq)]
pub struct Race {
    /// The order of the two accesses.
    pub kind: RaceKind,
    /// The block.
    pub block: [u32; 3],
    /// Linear thread index and instruction of the first access.
    pub first: (u32, u64),
    /// Linear thread index and instruction of the second access.
    pub second: (u32, u64),
    /// The shared array (its `SHARED` name) and the byte offset in it.
    pub array: String,
    /// Byte offset in the array.
    pub offset: u32,
}

/// The per-block sets of global sectors of a sampled launch, for `sample.rs`.
pub(crate) struct Footprint {
    pub(crate) block: [u32; 3],
    /// (address >> 5) << 1 | written, sorted.
    pub(crate) sectors: Vec<u64>,
}

/// Everything traced about one launch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchTrace {
    /// The kernel.
    pub kernel: Kernel,
    /// Its geometry.
    pub geometry: Geometry,
    /// Blocks in the grid.
    pub blocks: u64,
    /// Blocks that ran (all of them unless sampled).
    pub sampled: usize,
    /// Per instruction, scaled to the grid, in address order.
    pub sites: Vec<Site>,
    /// Warp-level mma.m16n8k16 instructions.
    pub mma: f64,
    /// Block barriers completed (per block, summed over blocks).
    pub barriers: f64,
    /// Unique bytes read from global memory (32-byte sectors), the DRAM lower bound's
    /// read side; estimated by translating the sampled blocks' footprints when sampled.
    pub unique_read: f64,
    /// Unique bytes written to global memory (32-byte sectors).
    pub unique_written: f64,
    /// Distinct races (at most 16), with the total count of racing accesses.
    pub races: Vec<Race>,
    /// Racing accesses found in all.
    pub races_total: u32,
}

impl LaunchTrace {
    /// Whether every block ran (the counters are exact).
    pub fn exact(&self) -> bool {
        self.sampled as u64 == self.blocks
    }

    /// Threads per block.
    pub fn threads(&self) -> u64 {
        self.geometry.block.iter().map(|&b| u64::from(b)).product()
    }
}

/// A launch as the counters see it: kernel, geometry, the scalar arguments and each
/// pointer's offset within 256 bytes (which sets sector and bank alignment).
type LaunchKey = (&'static str, [u32; 3], [u32; 3], u32, Vec<u64>);

/// The traced launches of one emulator, in order.
pub struct Recorder {
    config: TraceConfig,
    launches: Mutex<Vec<LaunchTrace>>,
    /// Sampled launches already traced: a repeat (the same layer shape again) reuses
    /// the counters instead of running, its outputs being incomplete anyway.
    seen: Mutex<HashMap<LaunchKey, LaunchTrace>>,
}

impl Recorder {
    pub(crate) fn new(config: TraceConfig) -> Self {
        Recorder { config, launches: Mutex::new(Vec::new()), seen: Mutex::new(HashMap::new()) }
    }

    fn key(kernel: Kernel, geom: &Geometry, args: &[Arg]) -> LaunchKey {
        let args = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => (p & 255) | 1 << 40,
                Arg::I32(v) => u64::from(v as u32) | 2 << 40,
                Arg::F32(v) => u64::from(v.to_bits()) | 3 << 40,
            })
            .collect();
        (kernel.name, geom.grid, geom.block, geom.smem_bytes, args)
    }

    /// Whether large launches are sampled (some blocks, and repeats, not run).
    pub(crate) fn samples(&self) -> bool {
        matches!(self.config.sampling, Sampling::Sample(_))
    }

    /// Takes the launches traced so far.
    pub(crate) fn take(&self) -> Vec<LaunchTrace> {
        std::mem::take(&mut *self.launches.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Launches so far.
    pub(crate) fn count(&self) -> usize {
        self.launches.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Runs the instrumented entry of `kernel` on `launch`, tracing it; returns the
    /// entry's status as the plain entry would.
    pub(crate) fn run(
        &self,
        kernel: Kernel,
        geom: &Geometry,
        launch: &EmuLaunch,
        ptrs: *mut *mut c_void,
        args: &[Arg],
        live: &[std::sync::Arc<Alloc>],
    ) -> Result<i32> {
        let Some(&(_, _, entry)) = EMU_TRACED_ENTRIES.iter().find(|(_, n, _)| *n == kernel.name) else {
            return Err(Error::Cuda(format!("emu: kernel `{}` has no traced build", kernel.name)));
        };
        let blocks: u64 = geom.grid.iter().map(|&g| u64::from(g)).product();
        let plan = match self.config.sampling {
            Sampling::Sample(max) if blocks > max => Some(sample::plan(geom.grid)),
            _ => None,
        };
        let key = plan.as_ref().map(|_| Self::key(kernel, geom, args));
        if let Some(k) = &key {
            if let Some(t) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(k).cloned() {
                self.launches.lock().unwrap_or_else(|e| e.into_inner()).push(t);
                return Ok(0);
            }
        }
        let (coords, weights): (Vec<u32>, Vec<f64>) = match &plan {
            Some(p) => (p.iter().flat_map(|(b, _)| *b).collect(), p.iter().map(|(_, w)| *w).collect()),
            None => (Vec::new(), Vec::new()),
        };
        let mut bufs: Vec<(u64, u64)> =
            live.iter().map(|a| (a.data() as u64, a.data() as u64 + 4 * a.len() as u64)).collect();
        bufs.sort_unstable();
        let flat: Vec<u64> = bufs.iter().flat_map(|&(a, b)| [a, b]).collect();
        let req = EmuTraceRequest {
            nblocks: (coords.len() / 3) as u32,
            blocks: coords.as_ptr(),
            weights: weights.as_ptr(),
            nbufs: bufs.len() as u32,
            bufs: flat.as_ptr(),
            races: u32::from(self.config.races),
            footprints: 1,
        };
        let mut totals = EmuTraceTotals::default();
        // SAFETY: `req` and the vectors it points into outlive the launch, which runs
        // to completion on this thread; the results read below stay valid until the
        // next `emu_trace_begin` on this thread, which cannot happen before we return.
        let (rc, sites, races, footprints) = unsafe {
            emu_trace_begin(&req);
            let rc = (entry as EmuEntry)(launch, ptrs);
            emu_trace_end(&mut totals);
            (rc, read_sites(&totals), read_races(&totals), read_footprints(&totals))
        };
        let pointers: Vec<u64> =
            args.iter().filter_map(|a| if let Arg::Ptr(p) = *a { Some(p) } else { None }).collect();
        let (unique_read, unique_written) = match &plan {
            None => sample::exact_unique(&footprints),
            Some(p) => sample::estimate_unique(geom.grid, p, &footprints, &pointers),
        };
        let trace = LaunchTrace {
            kernel,
            geometry: *geom,
            blocks,
            sampled: plan.as_ref().map_or(blocks as usize, Vec::len),
            sites,
            mma: totals.mma,
            barriers: totals.barriers,
            unique_read,
            unique_written,
            races,
            races_total: totals.races_total,
        };
        if let (Some(k), 0) = (key, rc) {
            self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(k, trace.clone());
        }
        self.launches.lock().unwrap_or_else(|e| e.into_inner()).push(trace);
        Ok(rc)
    }
}

/// # Safety
/// Right after `emu_trace_end` on this thread.
unsafe fn read_sites(t: &EmuTraceTotals) -> Vec<Site> {
    let p = emu_trace_sites();
    if p.is_null() || t.nsites == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(p, t.nsites as usize)
        .iter()
        .map(|s| Site {
            pc: s.pc,
            kind: AccessKind::from_raw(s.kind),
            size: s.size,
            main_loop: s.main_loop != 0,
            requests: s.requests,
            lanes: s.lanes,
            sectors: s.sectors,
            ideal: s.ideal,
            wavefronts: s.wavefronts,
            bytes: s.bytes,
        })
        .collect()
}

/// # Safety
/// Right after `emu_trace_end` on this thread.
unsafe fn read_races(t: &EmuTraceTotals) -> Vec<Race> {
    let p = emu_trace_races();
    if p.is_null() || t.nraces == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(p, t.nraces as usize)
        .iter()
        .map(|r| Race {
            kind: match r.kind {
                0 => RaceKind::ReadWrite,
                1 => RaceKind::WriteRead,
                _ => RaceKind::WriteWrite,
            },
            block: r.block,
            first: (r.tid_first, r.pc_first),
            second: (r.tid_second, r.pc_second),
            array: CStr::from_ptr(r.array).to_string_lossy().into_owned(),
            offset: r.offset,
        })
        .collect()
}

/// # Safety
/// Right after `emu_trace_end` on this thread.
unsafe fn read_footprints(t: &EmuTraceTotals) -> Vec<Footprint> {
    let p = emu_trace_footprints();
    if p.is_null() || t.nfootprints == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(p, t.nfootprints as usize)
        .iter()
        .map(|f| Footprint {
            block: f.block,
            sectors: if f.n == 0 { Vec::new() } else { std::slice::from_raw_parts(f.sectors, f.n as usize).to_vec() },
        })
        .collect()
}

/// Source locations of instruction addresses of the traced build: for each `pc`,
/// the inlining chain innermost first (`ld4 at kernels/common.cuh:301`, `… at
/// kernels/conv2d_mma.cu:112`), from `addr2line` (binutils, present wherever the
/// host compiler that built the emulator is). Addresses it cannot resolve map to
/// their hexadecimal form and the reason.
pub fn symbolize(pcs: &[u64]) -> HashMap<u64, Vec<String>> {
    let mut out = HashMap::new();
    let mut by_module: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for &pc in pcs {
        let mut off = 0u64;
        let mut path = [0 as c_char; 4096];
        // SAFETY: `path` is writable for its length; the function NUL-terminates.
        let ok = unsafe { emu_pc_module(pc, &mut off, path.as_mut_ptr(), path.len() as u32) } != 0;
        if ok {
            // SAFETY: NUL-terminated above.
            let p = unsafe { CStr::from_ptr(path.as_ptr()) }.to_string_lossy().into_owned();
            // The return address points after the call: the access is the byte before.
            by_module.entry(p).or_default().push((pc, off.saturating_sub(1)));
        } else {
            out.insert(pc, vec![format!("{pc:#x} (no module)")]);
        }
    }
    for (module, list) in by_module {
        let mut cmd = Command::new("addr2line");
        cmd.args(["-a", "-f", "-i", "-C", "-e", &module]);
        cmd.args(list.iter().map(|(_, off)| format!("{off:#x}")));
        let text = match cmd.output() {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => format!("addr2line failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => format!("addr2line not run: {e}"),
        };
        let chains = parse_addr2line(&text);
        for (i, (pc, _)) in list.iter().enumerate() {
            let chain = chains.get(i).cloned().filter(|c| !c.is_empty());
            out.insert(*pc, chain.unwrap_or_else(|| vec![format!("{pc:#x} ({})", text.lines().next().unwrap_or(""))]));
        }
    }
    out
}

/// `addr2line -a -f -i` output: per address a `0x…` line, then (function, file:line)
/// pairs, innermost first. Paths are shortened to what follows `kernels/` or `src/`.
fn parse_addr2line(text: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("0x") {
            out.push(Vec::new());
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        let loc = lines.next().unwrap_or("??:0");
        let loc = ["kernels/", "src/"].iter().find_map(|k| loc.rfind(k).map(|i| &loc[i..])).unwrap_or(loc);
        let func = l.split('(').next().unwrap_or(l).rsplit("::").next().unwrap_or(l);
        cur.push(format!("{func} at {}", loc.split(" (").next().unwrap_or(loc)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addr2line_chains() {
        let text = "0x0000000000001234\nld4(float const*)\n/r/kernels/common.cuh:301\n\
                    emu_traced_conv2d::conv_gemm<true>(...)\n/r/kernels/conv2d.cu:120 (discriminator 2)\n\
                    0x0000000000001240\n??\n??:0\n";
        let c = parse_addr2line(text);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0], ["ld4 at kernels/common.cuh:301", "conv_gemm<true> at kernels/conv2d.cu:120"]);
        assert_eq!(c[1], ["?? at ??:0"]);
    }
}
