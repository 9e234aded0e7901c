//! The build script's second job: every kernel file compiled ahead of time by
//! NVRTC 13.0 into the images of `src/backend/cuda/embed.rs` (cubins for sm_80,
//! sm_86, sm_87, sm_89, sm_90, PTX for the file's minimum architecture), compressed
//! and embedded through `$OUT_DIR/embedded_kernels.rs`, so that a GPU needs only the
//! driver.
//!
//! NVRTC is found as the binary finds it at run time (`locate.rs`: `LESIONSEG_NVRTC`,
//! `CUDA_HOME`/`CUDA_PATH`, `/usr/local/cuda*`, the pinned wheel in `.cache/nvidia`,
//! the linker path), but only a 13.0.x library is used: a newer one emits PTX that a
//! CUDA 13.0 driver rejects (CUDA_ERROR_UNSUPPORTED_PTX_VERSION), while 13.0 cubins
//! and PTX load on every 13.x driver. Without one the build succeeds, says so once
//! (`cargo:warning`), and the binary compiles at run time as before.
//! `LESIONSEG_EMBED=0` skips this step; `LESIONSEG_EMBED=require` fails the build
//! instead of warning.
//!
//! Compiled images are cached by their `embed::build_key` (source, the `kernels/*.cuh` headers,
//! target, options, NVRTC version) in `target/lesionseg-kernel-images/`, shared by
//! every profile (and emptied by `cargo clean`), so an unchanged kernel is never
//! compiled twice (a fresh build compiles 8 files × 6 targets: about 23 s of CPU,
//! 38 s on the 2 shared cores measured). A source NVRTC rejects fails the build
//! with NVRTC's log: an embedded set with a hole would be worse.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use crate::embed::{self, Kind};
use crate::nvrtc_lib::{self, Nvrtc, Output};

/// One image to embed: what it is and where its compressed bytes are.
struct Job {
    module: String,
    source: String,
    kind: Kind,
    arch: u32,
    key: u64,
    file: PathBuf,
}

/// Compiles (or finds in the cache) every image and writes `embedded_kernels.rs`.
pub fn embed(out: &Path, kernels: &[(String, PathBuf)], headers: &[(String, PathBuf)]) {
    for var in ["LESIONSEG_NVRTC", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "LESIONSEG_EMBED"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let mode = env::var("LESIONSEG_EMBED").unwrap_or_default();
    let nvrtc = match mode.as_str() {
        "0" | "no" | "off" => Err("LESIONSEG_EMBED=0".to_string()),
        _ => nvrtc_lib::load_first(|n| {
            if n.version == (13, 0) {
                Ok(())
            } else {
                Err("the embedded kernels are made with 13.0.x only: newer NVRTC emits PTX that CUDA 13.0 drivers \
                     reject"
                    .into())
            }
        }),
    };
    let nvrtc = match nvrtc {
        Ok(n) => n,
        Err(why) => {
            assert!(mode != "require", "LESIONSEG_EMBED=require, but the kernels cannot be embedded: {why}");
            if mode != "0" {
                println!(
                    "cargo:warning=kernels not embedded ({why}); GPU runs will need NVRTC at run time. For a binary \
                     that needs only the driver: scripts/build-driver-only.sh"
                );
            }
            write_table(out, Err(&why), &[]);
            return;
        }
    };
    if nvrtc.path.is_absolute() {
        println!("cargo:rerun-if-changed={}", nvrtc.path.display());
    }

    let header_texts: Vec<(String, String)> = headers
        .iter()
        .map(|(stem, path)| (format!("{stem}.cuh"), fs::read_to_string(path).expect("read a kernels/*.cuh header")))
        .collect();
    let common: Vec<(&str, &str)> = header_texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let common = common.as_slice();
    // The shared cache, else (unwritable) one for this profile alone.
    let cache =
        Some(cache_dir(out)).filter(|c| fs::create_dir_all(c).is_ok()).unwrap_or_else(|| out.join("kernel-images"));
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
    let mut jobs = Vec::new();
    for (module, path) in kernels {
        let source = fs::read_to_string(path).expect("read kernel source");
        let min = embed::min_arch(&source).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (kind, arch) in embed::targets(min) {
            let target = embed::target_name(kind, arch);
            let key = embed::build_key(&source, common, &target, nvrtc_lib::OPTIONS, &nvrtc.version_string());
            let file = cache.join(format!("{module}-{target}-{key:016x}.z"));
            jobs.push(Job { module: module.clone(), source: source.clone(), kind, arch, key, file });
        }
    }
    compile_missing(&nvrtc, common, &jobs);
    let what = format!("NVRTC {} ({})", nvrtc.version_string(), nvrtc.path.display());
    write_table(out, Ok(&what), &jobs.iter().map(|j| (j, embed::source_hash(&j.source, common))).collect::<Vec<_>>());
}

/// `target/lesionseg-kernel-images` (OUT_DIR is `target/<profile>/build/<pkg>/out`),
/// else OUT_DIR itself.
fn cache_dir(out: &Path) -> PathBuf {
    let mut up = out.ancestors();
    match (up.nth(2), up.nth(1)) {
        (Some(build), Some(target)) if build.file_name().is_some_and(|n| n == "build") => {
            target.join("lesionseg-kernel-images")
        }
        _ => out.join("kernel-images"),
    }
}

/// Compiles the jobs whose file is not cached yet, on as many threads as cargo gives
/// this build (`NUM_JOBS`).
fn compile_missing(nvrtc: &Nvrtc, common: &[(&str, &str)], jobs: &[Job]) {
    let todo: Vec<&Job> = jobs.iter().filter(|j| !j.file.is_file()).collect();
    if todo.is_empty() {
        return;
    }
    let threads = env::var("NUM_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(2usize).clamp(1, todo.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(job) = todo.get(i) else { break };
                        if let Err(e) = compile_one(nvrtc, common, job) {
                            failed.push(e);
                        }
                    }
                    failed
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("compile thread")).collect()
    });
    assert!(failures.is_empty(), "embedding the kernels failed:\n{}", failures.join("\n"));
}

/// Compiles one image, checks it is what it claims, compresses it into its cache file.
fn compile_one(nvrtc: &Nvrtc, common: &[(&str, &str)], job: &Job) -> Result<(), String> {
    let target = embed::target_name(job.kind, job.arch);
    let output = match job.kind {
        Kind::Cubin => Output::Cubin,
        Kind::Ptx => Output::Ptx,
    };
    let name = format!("kernels/{}.cu for {target}", job.module);
    let (image, _log) = nvrtc
        .compile_to(&job.module, &job.source, common, &target, output)
        .map_err(|log| format!("{name}: NVRTC {} rejected it:\n{log}", nvrtc.version_string()))?;
    let arch = match job.kind {
        Kind::Cubin => embed::cubin_arch(&image).map_err(|e| format!("{name}: {e}"))?,
        Kind::Ptx => embed::ptx_arch(&String::from_utf8_lossy(&image)).unwrap_or(0),
    };
    if arch != job.arch {
        return Err(format!("{name}: NVRTC produced an image for architecture {arch}"));
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&image).and_then(|()| z.finish()).map_err(|e| format!("{name}: compressing: {e}")).and_then(|bytes| {
        let tmp = job.file.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, &job.file))
            .map_err(|e| format!("{name}: writing {}: {e}", job.file.display()))
    })
}

/// `$OUT_DIR/embedded_kernels.rs`: what compiled the images (or why there are none)
/// and the image table, included by `src/backend/cuda/embedded.rs`.
fn write_table(out: &Path, made_by: Result<&str, &str>, jobs: &[(&Job, u64)]) {
    let mut s = String::from("// Generated by build.rs (build/aot.rs) from kernels/*.cu.\n\n");
    let made_by = match made_by {
        Ok(what) => format!("Ok({what:?})"),
        Err(why) => format!("Err({why:?})"),
    };
    writeln!(s, "/// The NVRTC that compiled the embedded images, or why there are none.").unwrap();
    writeln!(s, "pub const MADE_BY: std::result::Result<&str, &str> = {made_by};\n").unwrap();
    s += "/// Every embedded image, by module, cubins (ascending) then PTX.\npub const IMAGES: &[Image] = &[\n";
    for (job, hash) in jobs {
        let kind = match job.kind {
            Kind::Cubin => "Cubin",
            Kind::Ptx => "Ptx",
        };
        writeln!(
            s,
            "    Image {{ module: {:?}, source_hash: {hash:#018x}, build_key: {:#018x}, kind: Kind::{kind}, arch: {}, \
             zlib: include_bytes!({:?}) }},",
            job.module,
            job.key,
            job.arch,
            job.file.display().to_string()
        )
        .unwrap();
    }
    s += "];\n";
    fs::write(out.join("embedded_kernels.rs"), s).expect("write embedded_kernels.rs");
}
