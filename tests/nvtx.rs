//! `--nvtx` against a stand-in NVTX tool: a small injection library, compiled here
//! with the system C compiler, that follows the NVTX 3 protocol as Nsight does
//! (reads the callbacks export table, fills slots of every module's function table)
//! and logs each push and pop. The test checks that every layer pass of a profiled
//! step arrives as a named, balanced range.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tool: fills core RangePushA (9) and RangePop (11) with loggers and every
/// other slot of every module with a function that must never be called.
const MOCK_TOOL: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*fnptr)(void);
typedef const void *(*get_export_table_t)(uint32_t);
typedef struct {
    size_t struct_size;
    int (*get_module_function_table)(int module, fnptr ***table, unsigned *size);
} callbacks_t;
typedef struct {
    size_t struct_size;
    uint32_t version;
    uint32_t reserved0;
    void (*set_injection_nvtx_version)(uint32_t);
} version_info_t;

static FILE *out;
static int push(const char *msg) { fprintf(out, "push %s\n", msg); fflush(out); return 0; }
static int pop(void) { fprintf(out, "pop\n"); fflush(out); return 0; }
static void never(void) { fprintf(out, "unexpected call\n"); fflush(out); abort(); }

int InitializeInjectionNvtx2(get_export_table_t get) {
    out = fopen(getenv("NVTX_MOCK_LOG"), "w");
    if (!out) return 0;
    const callbacks_t *cb = get(1);
    const version_info_t *vi = get(3);
    if (!cb || cb->struct_size < sizeof(callbacks_t) || !vi || vi->struct_size < sizeof(version_info_t)) {
        fprintf(out, "bad export tables\n");
        return 0;
    }
    vi->set_injection_nvtx_version(3);
    fprintf(out, "version %u\n", vi->version);
    /* module sizes the header declares: core 16, cuda 9, opencl 15, cudart 7, core2 16, sync 7 */
    const unsigned want[7] = {0, 16, 9, 15, 7, 16, 7};
    for (int m = 1; m <= 6; m++) {
        fnptr **table = 0;
        unsigned size = 0;
        if (!cb->get_module_function_table(m, &table, &size) || size != want[m] || table[0] != 0 || table[size] != 0) {
            fprintf(out, "bad table for module %d (size %u)\n", m, size);
            return 0;
        }
        for (unsigned i = 1; i < size; i++) *table[i] = never;
        if (m == 1) {
            *table[9] = (fnptr)push;
            *table[11] = (fnptr)pop;
        }
    }
    fnptr **none = 0;
    if (cb->get_module_function_table(7, &none, 0) != 0 || get(2) != 0) {
        fprintf(out, "unknown ids accepted\n");
        return 0;
    }
    return 1;
}
"#;

/// The stand-in tool built in `dir`, or `None` (with the reason printed) when
/// there is no C compiler.
fn build_tool(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("mock_nvtx_tool.c");
    let lib = dir.join("libmock_nvtx_tool.so");
    std::fs::write(&src, MOCK_TOOL).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    match Command::new(&cc).args(["-shared", "-fPIC", "-O1", "-o"]).arg(&lib).arg(&src).output() {
        Ok(o) if o.status.success() => Some(lib),
        Ok(o) => panic!("{cc} failed on the stand-in NVTX tool:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("SKIPPED: no C compiler ({cc}: {e}) to build the stand-in NVTX tool");
            None
        }
    }
}

fn lesionseg(args: &[&str], envs: &[(&str, &Path)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lesionseg"));
    c.args(args).env_remove("NVTX_INJECTION64_PATH");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

const PROFILE: &[&str] =
    &["profile", "--device", "cpu", "--size", "32", "--width", "0.0625", "--steps", "2", "--nvtx", "--json"];

#[test]
fn profile_nvtx_names_every_layer_pass_in_balanced_ranges() {
    let dir = tempfile_dir("nvtx-ranges");
    let Some(tool) = build_tool(&dir) else { return };
    let log = dir.join("ranges.log");
    let out = lesionseg(PROFILE, &[("NVTX_INJECTION64_PATH", &tool), ("NVTX_MOCK_LOG", &log)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "profile --nvtx failed: {stderr}");
    assert!(!stderr.contains("no NVTX tool attached"), "the tool was not seen: {stderr}");
    let pushes = balanced_ranges(&log);

    // Every layer of the profile's table, in its own ranges; the steps around them.
    let json = String::from_utf8_lossy(&out.stdout);
    let layers: Vec<&str> =
        json.match_indices("\"name\": \"").map(|(i, m)| json[i + m.len()..].split('"').next().unwrap()).collect();
    assert_eq!(layers.len(), 34, "{json}");
    let count = |name: &str| pushes.iter().filter(|p| *p == name).count();
    for l in &layers {
        let (f, b) = (count(&format!("{l} forward")), count(&format!("{l} backward")));
        match *l {
            // The loss runs in the backward pass; Adam after it.
            "loss" | "adam" => assert!(f == 0 && b >= 2, "{l}: {f} forward, {b} backward ranges"),
            // enc1_1 … final: warm-up + 2 timed steps + 2 inference passes + 2 per-layer steps.
            _ => assert!(f >= 6 && b >= 4, "{l}: {f} forward, {b} backward ranges"),
        }
    }
    assert_eq!(count("train_step"), 2, "{pushes:?}");
    assert_eq!(count("inference"), 2, "{pushes:?}");
    assert_eq!(count("train_step (per-layer marks)"), 2, "{pushes:?}");
}

#[test]
fn train_nvtx_puts_each_step_and_layer_pass_in_a_range() {
    let dir = tempfile_dir("nvtx-train");
    let Some(tool) = build_tool(&dir) else { return };
    let (data, run, log) = (dir.join("data"), dir.join("run"), dir.join("ranges.log"));
    let synth = lesionseg(&["synth", "--out", data.to_str().unwrap(), "--count", "6", "--size", "64"], &[]);
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let args = [
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--size",
        "32",
        "--width",
        "0.0625",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--nvtx",
    ];
    let out = lesionseg(&args, &[("NVTX_INJECTION64_PATH", &tool), ("NVTX_MOCK_LOG", &log)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pushes = balanced_ranges(&log);
    // 6 images, 80/20 split: 5 training images in batches of 2 = 3 steps (the last partial).
    let steps = pushes.iter().filter(|p| *p == "train_step").count();
    assert!((2..=3).contains(&steps), "{steps} train_step ranges: {pushes:?}");
    for name in ["enc1_1 forward", "dec1 backward", "loss backward", "adam backward"] {
        assert_eq!(pushes.iter().filter(|p| *p == name).count(), steps, "{name}: {pushes:?}");
    }
}

#[test]
fn nvtx_without_a_tool_says_so_and_runs() {
    let out = lesionseg(PROFILE, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no NVTX tool attached") && stderr.contains("nsys"), "{stderr}");
}

#[test]
fn nvtx_with_a_file_that_is_no_tool_is_one_clear_error() {
    let dir = tempfile_dir("nvtx-bad-tool");
    let fake = dir.join("not_a_tool.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let out = lesionseg(PROFILE, &[("NVTX_INJECTION64_PATH", &fake)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("NVTX_INJECTION64_PATH") && lines[0].contains("not_a_tool.so"), "{stderr}");
}

/// The names pushed in the stand-in tool's `log`, after checking that it was
/// initialised and that the ranges are balanced and nested (a pop never goes below
/// zero and every range closes).
fn balanced_ranges(log: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(log).unwrap();
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("version 3"), "{log}");
    let (mut depth, mut pushes) = (0i32, Vec::new());
    for line in lines {
        match line.strip_prefix("push ") {
            Some(name) => {
                depth += 1;
                pushes.push(name.to_string());
            }
            None => {
                assert_eq!(line, "pop", "unexpected line in the tool's log: {log}");
                depth -= 1;
                assert!(depth >= 0, "pop without a push: {log}");
            }
        }
    }
    assert_eq!(depth, 0, "ranges left open: {log}");
    pushes
}

/// A fresh folder under the target directory's tmp.
fn tempfile_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
