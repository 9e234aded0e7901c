//! Build script: compiles the kernel sources in `kernels/*.cu` for the host emulator
//! (with the emulator runtime in `src/backend/emu/*.cpp`) into one static library,
//! and generates the tables both kernel backends use, all from the one list of entry
//! points each kernel file ends with (`ENTRY_POINTS(name, ...)`, see
//! `kernels/common.cuh`):
//!
//! - `$OUT_DIR/emu/<module>.cc`, what the emulator compiles for `kernels/<module>.cu`:
//!   the kernel file itself (`#include`d) followed by one `EMU_EXPORT(name)` per entry
//!   point, the `extern "C"` functions the emulator launches.
//! - `$OUT_DIR/kernels.rs` (included by `src/backend/cuda/sources.rs`): `SOURCES`
//!   (module, source text) of every kernel file, `HEADERS` (name, text) of every
//!   `kernels/*.cuh` (NVRTC gets them in memory, as it has no include path) and
//!   `ENTRY_POINTS` (module, kernel), for NVRTC.
//! - `$OUT_DIR/emu_entries.rs` (included by `src/backend/emu/mod.rs`): the
//!   `extern "C"` declarations of every `emu_entry_<name>` and `EMU_ENTRIES`, the table
//!   the emulator launches from.
//!
//! - `$OUT_DIR/embedded_kernels.rs` (included by `src/backend/cuda/embedded.rs`): every
//!   kernel file compiled ahead of time by NVRTC 13.0 (cubins and PTX; see `build/aot.rs`).
//!
//! Every kernel file is compiled twice for the emulator: as is (`emu_entry_<name>`,
//! what launches run) and instrumented for the access tracer
//! (`$OUT_DIR/traced/<module>.cpp`, exporting `emu_traced_entry_<name>`, see
//! `src/backend/emu/trace.cpp`): GCC's kernel-address instrumentation with a call
//! threshold of 0 turns each load and store into a call the tracer defines. The second
//! copy is wrapped in a namespace of its own, so the two never share an inline function
//! or a type, and built without the passes that would merge or split accesses (SRA,
//! store merging, vectorisation, loop-to-memset), so a 16-byte vector load stays one
//! 16-byte access, as on the GPU.
//!
//! New kernel files and headers are picked up by globbing `kernels/`, sorted so the
//! output is deterministic.

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
/// The emulator's headers every host object depends on (besides `kernels/*.cuh`).
const EMU_HEADERS: &[&str] = &["src/backend/emu/host.h", "src/backend/emu/runtime.h"];
/// The runtime's tracer (its own list: it is not part of the kernels' runtime API).
const TRACER: &str = "src/backend/emu/trace.cpp";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels = kernel_files(&root.join("kernels"), "cu");
    let headers = kernel_files(&root.join("kernels"), "cuh");

    println!("cargo:rerun-if-changed=kernels");
    for f in
        ["build/aot.rs", "src/backend/cuda/locate.rs", "src/backend/cuda/nvrtc_lib.rs", "src/backend/cuda/embed.rs"]
    {
        println!("cargo:rerun-if-changed={f}");
    }
    for f in RUNTIME.iter().chain(EMU_HEADERS).chain([&TRACER]) {
        println!("cargo:rerun-if-changed={f}");
    }
    for (_, path) in kernels.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let entries = entry_points(&kernels);

    let mut build = emu_build();
    for f in RUNTIME.iter().chain([&TRACER]) {
        build.file(root.join(f));
    }
    let emu_dir = out.join("emu");
    fs::create_dir_all(&emu_dir).expect("create $OUT_DIR/emu");
    for (module, path) in &kernels {
        let wrapper = emu_dir.join(format!("{module}.cc"));
        write_if_changed(&wrapper, &emu_wrapper(path, &entries, module));
        build.file(wrapper);
    }
    build.compile("lesionseg_emu");
    traced_build(&root, &out, &kernels, &entries).compile("lesionseg_emu_traced");

    fs::write(out.join("kernels.rs"), kernels_rs(&kernels, &headers, &entries)).expect("write kernels.rs");
    fs::write(out.join("emu_entries.rs"), emu_entries_rs(&entries)).expect("write emu_entries.rs");
    aot::embed(&out, &kernels, &headers);
}

/// Writes a generated source only when its text changed, so the C++ compiler's
/// outputs stay fresh.
fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).expect("write a generated emulator source");
    }
}

/// The host compiler set up for the emulator's C++ (runtime and kernels).
fn emu_build() -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .flag("-std=c++17")
        // `#pragma unroll` is for NVRTC.
        .flag("-Wno-unknown-pragmas")
        // The fortified longjmp aborts on a jump between fiber stacks.
        .flag("-U_FORTIFY_SOURCE")
        // No implicit FMA: GCC contracts a*b+c by default in C++ wherever the target
        // has FMA (not baseline x86-64, but aarch64 and -march=native builds). Kernels
        // fuse only where they say so (fmaf); the CPU reference never does.
        .flag("-ffp-contract=off")
        // Probe every page of a large stack frame, so a fiber stack overflow always
        // lands in the guard page instead of jumping over it into the next stack.
        .flag("-fstack-clash-protection")
        .opt_level(2)
        .warnings(true);
    build
}

/// The instrumented copy of every kernel file: a generated wrapper per file that
/// includes it inside `namespace emu_traced_<module>` (the runtime header first, at
/// global scope, so only the kernel file and common.cuh's helpers are namespaced).
fn traced_build(root: &Path, out: &Path, kernels: &[(String, PathBuf)], entries: &[(String, String)]) -> cc::Build {
    let dir = out.join("traced");
    fs::create_dir_all(&dir).expect("create OUT_DIR/traced");
    let mut build = emu_build();
    build
        .flag("-fsanitize=kernel-address")
        .flag("--param")
        .flag("asan-instrumentation-with-call-threshold=0")
        .flag("--param")
        .flag("asan-stack=0")
        .flag("--param")
        .flag("asan-globals=0")
        .flag("-fno-tree-sra")
        .flag("-fno-store-merging")
        .flag("-fno-tree-vectorize")
        .flag("-fno-tree-loop-distribute-patterns")
        // Line tables, so a race report can name the source line.
        .flag("-g1");
    for (module, path) in kernels {
        let wrapper = dir.join(format!("{module}.cpp"));
        let text = format!(
            "// Generated by build.rs: kernels/{module}.cu instrumented for the access tracer.\n\
             #define EMU_TRACED 1\n#include {:?}\nnamespace emu_traced_{module} {{\n{}}}\n",
            root.join("src/backend/emu/host.h").display().to_string(),
            emu_wrapper(path, entries, module)
        );
        write_if_changed(&wrapper, &text);
        build.file(wrapper);
    }
    build
}

/// (stem, path) of every `kernels/*.<ext>`, sorted by name.
fn kernel_files(dir: &Path, ext: &str) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .expect("read kernels/")
        .filter_map(|e| {
            let path = e.expect("read kernels/ entry").path();
            let stem = path.file_stem()?.to_str()?.to_string();
            (path.extension()? == ext).then_some((stem, path))
        })
        .collect();
    files.sort();
    files
}

/// (module, kernel) for every name in each kernel file's `ENTRY_POINTS(...)` list,
/// which must be the file's last item and must appear exactly once.
fn entry_points(kernels: &[(String, PathBuf)]) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for (module, path) in kernels {
        let text = fs::read_to_string(path).expect("read kernel source");
        let file = path.display();
        let starts: Vec<usize> = text
            .match_indices("ENTRY_POINTS(")
            .map(|(i, _)| i)
            .filter(|&i| i == 0 || text[..i].ends_with('\n'))
            .collect();
        let [start] = starts[..] else {
            panic!("{file}: expected one `ENTRY_POINTS(name, ...)` list at the start of a line, found {}", starts.len())
        };
        let list = &text[start + "ENTRY_POINTS(".len()..];
        let end = list.find(')').unwrap_or_else(|| panic!("{file}: unterminated ENTRY_POINTS list"));
        assert!(list[end + 1..].trim().is_empty(), "{file}: the ENTRY_POINTS list must end the file");
        for name in list[..end].split(',').map(str::trim) {
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{file}: bad entry point `{name}` in ENTRY_POINTS"
            );
            if let Some((other, _)) = entries.iter().find(|(_, n)| n == name) {
                panic!("kernel `{name}` is listed by both kernels/{other}.cu and kernels/{module}.cu");
            }
            entries.push((module.clone(), name.to_string()));
        }
    }
    entries
}

/// The emulator's translation unit for one kernel file: the file, then its exports.
fn emu_wrapper(path: &Path, entries: &[(String, String)], module: &str) -> String {
    let mut s = format!("// Generated by build.rs: {module}.cu and the emulator's exports of its entry points.\n");
    writeln!(s, "#include {:?}", path.display().to_string()).unwrap();
    for (_, name) in entries.iter().filter(|(m, _)| m == module) {
        writeln!(s, "EMU_EXPORT({name})").unwrap();
    }
    s
}

fn kernels_rs(kernels: &[(String, PathBuf)], headers: &[(String, PathBuf)], entries: &[(String, String)]) -> String {
    let mut s = String::from("// Generated by build.rs from kernels/*.cu and kernels/*.cuh.\n\n");
    s += "/// (module, source) of every kernel file in `kernels/`.\npub const SOURCES: &[(&str, &str)] = &[\n";
    for (module, path) in kernels {
        writeln!(s, "    ({module:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    s += "];\n\n/// (file name, text) of every header in `kernels/` (`common.cuh`, ...).\n";
    s += "pub const HEADERS: &[(&str, &str)] = &[\n";
    for (stem, path) in headers {
        writeln!(s, "    (\"{stem}.cuh\", include_str!({:?})),", path.display().to_string()).unwrap();
    }
    s += "];\n\n/// (module, kernel) of every name in the kernel files' `ENTRY_POINTS` lists.\n";
    s += "pub const ENTRY_POINTS: &[(&str, &str)] = &[\n";
    for (module, name) in entries {
        writeln!(s, "    ({module:?}, {name:?}),").unwrap();
    }
    s += "];\n";
    s
}

fn emu_entries_rs(entries: &[(String, String)]) -> String {
    let mut s = String::from("// Generated by build.rs from the ENTRY_POINTS lists of kernels/*.cu.\n\n");
    s += "extern \"C\" {\n";
    for (_, name) in entries {
        writeln!(s, "    fn emu_entry_{name}(launch: *const EmuLaunch, args: *mut *mut c_void) -> i32;").unwrap();
    }
    s += "}\n\n/// (module, kernel, host entry point) of every kernel.\n";
    s += "pub(crate) const EMU_ENTRIES: &[(&str, &str, EmuEntry)] = &[\n";
    for (module, name) in entries {
        writeln!(s, "    ({module:?}, {name:?}, emu_entry_{name}),").unwrap();
    }
    s += "];\n\n";
    s += "extern \"C\" {\n";
    for (_, name) in entries {
        writeln!(s, "    fn emu_traced_entry_{name}(launch: *const EmuLaunch, args: *mut *mut c_void) -> i32;")
            .unwrap();
    }
    s += "}\n\n/// (module, kernel, instrumented host entry point) of every kernel, for the tracer.\n";
    s += "pub(crate) const EMU_TRACED_ENTRIES: &[(&str, &str, EmuEntry)] = &[\n";
    for (module, name) in entries {
        writeln!(s, "    ({module:?}, {name:?}, emu_traced_entry_{name}),").unwrap();
    }
    s += "];\n";
    s
}
