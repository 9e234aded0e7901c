//! Build script: compiles the kernel sources in `kernels/*.cu` for the host emulator
//! (with the emulator runtime in `src/backend/emu/*.cpp`) into one static library,
//! and generates the tables both kernel backends use:
//!
//! - `$OUT_DIR/kernels.rs` (included by `src/backend/cuda/sources.rs`): `SOURCES`
//!   (module, source text) of every kernel file, `COMMON_HEADER` (the text of
//!   `kernels/common.cuh`) and `ENTRY_POINTS` (module, kernel) for every
//!   `EMU_EXPORT(name)` line, for NVRTC.
//! - `$OUT_DIR/emu_entries.rs` (included by `src/backend/emu/mod.rs`): the
//!   `extern "C"` declarations of every `emu_entry_<name>` and `EMU_ENTRIES`, the table
//!   the emulator launches from.
//!
//! - `$OUT_DIR/embedded_kernels.rs` (included by `src/backend/cuda/embedded.rs`): every
//!   kernel file compiled ahead of time by NVRTC 13.0 (cubins and PTX; see `build/aot.rs`).
//!
//! New kernel files are picked up by globbing `kernels/`, sorted so the output is
//! deterministic.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

// Shared with the library, so that the build finds and drives NVRTC exactly as the
// binary does at run time, and embeds by the rules the loader checks by.
#[path = "build/aot.rs"]
mod aot;
#[path = "src/backend/cuda/embed.rs"]
#[allow(dead_code)]
mod embed;
#[path = "src/backend/cuda/locate.rs"]
#[allow(dead_code)]
mod locate;
#[path = "src/backend/cuda/nvrtc_lib.rs"]
#[allow(dead_code)]
mod nvrtc_lib;

/// The emulator runtime, compiled with the kernels.
const RUNTIME: &[&str] = &[
    "src/backend/emu/sched.cpp",
    "src/backend/emu/warp.cpp",
    "src/backend/emu/memory.cpp",
    "src/backend/emu/fault.cpp",
];
/// Headers every host object depends on.
const HEADERS: &[&str] = &["kernels/common.cuh", "src/backend/emu/host.h", "src/backend/emu/runtime.h"];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels = kernel_files(&root.join("kernels"));

    println!("cargo:rerun-if-changed=kernels");
    for f in
        ["build/aot.rs", "src/backend/cuda/locate.rs", "src/backend/cuda/nvrtc_lib.rs", "src/backend/cuda/embed.rs"]
    {
        println!("cargo:rerun-if-changed={f}");
    }
    for f in RUNTIME.iter().chain(HEADERS) {
        println!("cargo:rerun-if-changed={f}");
    }
    for (_, path) in &kernels {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        // The .cu files would otherwise go to g++ as linker inputs (EMULATOR.md pitfall 1).
        .flag("-x")
        .flag("c++")
        .flag("-std=c++17")
        // `#pragma unroll` is for NVRTC.
        .flag("-Wno-unknown-pragmas")
        // The fortified longjmp aborts on a jump between fiber stacks (pitfall 3).
        .flag("-U_FORTIFY_SOURCE")
        // Probe every page of a large stack frame, so a fiber stack overflow always
        // lands in the guard page instead of jumping over it into the next stack.
        .flag("-fstack-clash-protection")
        .opt_level(2)
        .warnings(true);
    for f in RUNTIME {
        build.file(root.join(f));
    }
    for (_, path) in &kernels {
        build.file(path);
    }
    build.compile("lesionseg_emu");

    let entries = entry_points(&kernels);
    fs::write(out.join("kernels.rs"), kernels_rs(&root, &kernels, &entries)).expect("write kernels.rs");
    fs::write(out.join("emu_entries.rs"), emu_entries_rs(&entries)).expect("write emu_entries.rs");
    aot::embed(&root, &out, &kernels);
}

/// (module, path) of every `kernels/*.cu`, sorted by module name.
fn kernel_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .expect("read kernels/")
        .filter_map(|e| {
            let path = e.expect("read kernels/ entry").path();
            let module = path.file_stem()?.to_str()?.to_string();
            (path.extension()? == "cu").then_some((module, path))
        })
        .collect();
    files.sort();
    files
}

/// (module, kernel) for every line starting with `EMU_EXPORT(name)`.
fn entry_points(kernels: &[(String, PathBuf)]) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for (module, path) in kernels {
        let text = fs::read_to_string(path).expect("read kernel source");
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("EMU_EXPORT(") else { continue };
            let name = rest.split(')').next().unwrap_or("").trim().to_string();
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{}: bad EMU_EXPORT line `{line}`",
                path.display()
            );
            if let Some((other, _)) = entries.iter().find(|(_, n)| *n == name) {
                panic!("kernel `{name}` is exported by both kernels/{other}.cu and kernels/{module}.cu");
            }
            entries.push((module.clone(), name));
        }
    }
    entries
}

fn kernels_rs(root: &Path, kernels: &[(String, PathBuf)], entries: &[(String, String)]) -> String {
    let mut s = String::from("// Generated by build.rs from kernels/*.cu.\n\n");
    s += "/// (module, source) of every kernel file in `kernels/`.\npub const SOURCES: &[(&str, &str)] = &[\n";
    for (module, path) in kernels {
        writeln!(s, "    ({module:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    s += "];\n\n/// The text of `kernels/common.cuh`, the one header the kernels include.\n";
    writeln!(
        s,
        "pub const COMMON_HEADER: &str = include_str!({:?});",
        root.join("kernels/common.cuh").display().to_string()
    )
    .unwrap();
    s += "\n/// (module, kernel) of every `EMU_EXPORT(name)` in the kernel files.\n";
    s += "pub const ENTRY_POINTS: &[(&str, &str)] = &[\n";
    for (module, name) in entries {
        writeln!(s, "    ({module:?}, {name:?}),").unwrap();
    }
    s += "];\n";
    s
}

fn emu_entries_rs(entries: &[(String, String)]) -> String {
    let mut s = String::from("// Generated by build.rs from the EMU_EXPORT lines of kernels/*.cu.\n\n");
    s += "extern \"C\" {\n";
    for (_, name) in entries {
        writeln!(s, "    fn emu_entry_{name}(launch: *const EmuLaunch, args: *mut *mut c_void) -> i32;").unwrap();
    }
    s += "}\n\n/// (module, kernel, host entry point) of every kernel.\n";
    s += "pub(crate) const EMU_ENTRIES: &[(&str, &str, EmuEntry)] = &[\n";
    for (module, name) in entries {
        writeln!(s, "    ({module:?}, {name:?}, emu_entry_{name}),").unwrap();
    }
    s += "];\n";
    s
}
