//! The kernels embedded in the binary (no GPU needed): they were made by NVRTC 13.0
//! with today's options from the kernel files as they are on disk now, every image
//! is the kind and architecture it claims (a CUDA ELF for that sm_XY holding the
//! file's entry points, PTX for that target), each file has exactly the images its
//! minimum architecture calls for, and a fresh NVRTC 13.0 compilation gives the
//! same bytes.
//!
//! A kernel file edited after the binary was built fails here, naming the file: the
//! embedded images are stale (rebuild: `cargo build`). Without the pinned NVRTC the
//! recompilation is skipped (`CI` makes that a failure); a build that embedded
//! nothing (no NVRTC 13.0 at build time) is reported the same way.
//!
//! NVRTC 13.0 does not compile every file to the same bytes twice: for some (deconv.cu
//! today) the output depends on heap addresses (it is stable with ASLR off), so a
//! fresh compilation may be one of a few equivalent variants (one variant can win
//! every time in one process and another in the next). The recompilation therefore
//! retries, and where no retry reproduces the embedded bytes it compares what the
//! variants share (target, functions) and says so; the build key, checked in the
//! first test, is what proves provenance exactly.

use std::path::{Path, PathBuf};

use lesionseg::backend::cuda::embed::{self, Kind};
use lesionseg::backend::cuda::{embedded, nvrtc, nvrtc_lib, sources};

/// The NVRTC version the embedded kernels must come from.
const NVRTC_VERSION: &str = "13.0";
/// Fresh compilations tried per image before comparing interfaces instead of bytes.
const ATTEMPTS: usize = 2;

/// The files of `kernels/` with extension `ext`: (stem, text), sorted.
fn disk_files(ext: &str) -> Files {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(p).unwrap()))
        .collect()
}

/// `(name, text)` pairs of files.
type Files = Vec<(String, String)>;

/// The kernel files on disk: (module, source), sorted, and the headers as NVRTC
/// gets them: (file name, text).
fn disk_sources() -> (Files, Files) {
    let headers = disk_files("cuh").into_iter().map(|(stem, text)| (format!("{stem}.cuh"), text)).collect();
    (disk_files("cu"), headers)
}

/// `(name, text)` pairs borrowed, as NVRTC and the hashes take them.
fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect()
}

/// `None` after saying why (a failure when `CI` is set) when nothing was embedded.
fn embedded_or_skip() -> Option<&'static str> {
    match embedded::MADE_BY {
        Ok(by) => Some(by),
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but this build embeds no kernels: {why}");
            println!("SKIPPED: this build embeds no kernels ({why})");
            None
        }
    }
}

#[test]
fn embedded_images_match_the_sources_on_disk() {
    let Some(by) = embedded_or_skip() else { return };
    let (modules, headers) = disk_sources();
    let headers = borrowed(&headers);
    let mut problems = Vec::new();
    for (module, source) in &modules {
        let hash = embed::source_hash(source, &headers);
        let images: Vec<&embed::Image> = embedded::images_of(module).collect();
        if images.is_empty() {
            problems.push(format!("kernels/{module}.cu is not embedded (a new file? rebuild: cargo build)"));
            continue;
        }
        if images.iter().any(|i| i.source_hash != hash) {
            problems.push(format!(
                "kernels/{module}.cu (or a kernels/*.cuh header) changed since the embedded kernels were built: they are stale \
                 (rebuild: cargo build)"
            ));
            continue;
        }
        let min = embed::min_arch(source).unwrap_or_else(|e| panic!("kernels/{module}.cu: {e}"));
        let have: Vec<(Kind, u32)> = images.iter().map(|i| (i.kind, i.arch)).collect();
        if have != embed::targets(min) {
            problems.push(format!(
                "kernels/{module}.cu: embedded {have:?}, its minimum sm_{min} calls for {:?}",
                embed::targets(min)
            ));
        }
        let entries: Vec<&str> = sources::ENTRY_POINTS.iter().filter(|(m, _)| m == module).map(|(_, k)| *k).collect();
        for image in images {
            let key = embed::build_key(source, &headers, &image.target(), nvrtc::OPTIONS, NVRTC_VERSION);
            if image.build_key != key {
                problems.push(format!(
                    "kernels/{module}.cu: the embedded {} was not made by NVRTC {NVRTC_VERSION} with {:?} from this source",
                    image.target(),
                    nvrtc::OPTIONS
                ));
            }
            let bytes = embedded::bytes(image).unwrap();
            let (claimed, functions) = match image.kind {
                Kind::Cubin => (embed::cubin_arch(&bytes), embed::cubin_functions(&bytes).unwrap_or_default()),
                Kind::Ptx => {
                    let text = String::from_utf8_lossy(&bytes);
                    (embed::ptx_arch(&text).ok_or_else(|| "no .target".into()), nvrtc::ptx_entries(&text))
                }
            };
            if claimed != Ok(image.arch) {
                problems.push(format!("kernels/{module}.cu: the {} image is {claimed:?}", image.target()));
            }
            let missing: Vec<&&str> = entries.iter().filter(|e| !functions.iter().any(|f| f == **e)).collect();
            if !missing.is_empty() {
                problems.push(format!("kernels/{module}.cu: the embedded {} lacks {missing:?}", image.target()));
            }
        }
    }
    for image in embedded::IMAGES {
        if !modules.iter().any(|(m, _)| m == image.module) {
            problems.push(format!(
                "embedded {} of kernels/{}.cu, which no longer exists",
                image.target(),
                image.module
            ));
        }
    }
    assert!(problems.is_empty(), "embedded kernels ({by}):\n{}", problems.join("\n"));
    println!("{} images of {} kernel files match the sources on disk ({by})", embedded::IMAGES.len(), modules.len());
}

/// What must be equal between two compilations of one image even where NVRTC's
/// bytes vary: the target and the functions (cubin sections, PTX entries).
fn interface(image: &embed::Image, bytes: &[u8]) -> (Result<u32, String>, Vec<String>) {
    match image.kind {
        Kind::Cubin => (embed::cubin_arch(bytes), embed::cubin_functions(bytes).unwrap_or_default()),
        Kind::Ptx => {
            let text = String::from_utf8_lossy(bytes);
            (embed::ptx_arch(&text).ok_or_else(|| "no .target".into()), nvrtc::ptx_entries(&text))
        }
    }
}

/// Each embedded image compared with NVRTC 13.0's compilation of today's source:
/// the PTX and the sm_90 cubin of every file (every image with
/// `LESIONSEG_EMBED_CHECK=all`, about 3x longer).
#[test]
fn embedded_images_are_what_nvrtc_13_0_produces() {
    let Some(by) = embedded_or_skip() else { return };
    let want = |n: &nvrtc_lib::Nvrtc| {
        if n.version_string() == NVRTC_VERSION {
            Ok(())
        } else {
            Err(format!("not {NVRTC_VERSION}"))
        }
    };
    let nvrtc = match nvrtc_lib::load_first(want) {
        Ok(n) => n,
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but there is no NVRTC {NVRTC_VERSION}: {why}");
            println!("SKIPPED: no NVRTC {NVRTC_VERSION} to compare with ({why})");
            return;
        }
    };
    let all = std::env::var("LESIONSEG_EMBED_CHECK").is_ok_and(|v| v == "all");
    let (modules, headers) = disk_sources();
    let headers = borrowed(&headers);
    let jobs: Vec<(&str, &str, &embed::Image)> = modules
        .iter()
        .flat_map(|(m, s)| embedded::images_of(m).map(move |i| (m.as_str(), s.as_str(), i)))
        .filter(|(_, _, i)| all || i.kind == Kind::Ptx || i.arch == 90)
        .collect();
    let start = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    // (problems, notes) from every worker.
    let (problems, notes): (Vec<String>, Vec<String>) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = (Vec::new(), Vec::new());
                    while let Some(&(module, source, image)) =
                        jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        match compare(&nvrtc, module, source, &headers, image) {
                            Ok(None) => {}
                            Ok(Some(note)) => out.1.push(note),
                            Err(problem) => out.0.push(problem),
                        }
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).fold((Vec::new(), Vec::new()), |mut acc, (p, n)| {
            acc.0.extend(p);
            acc.1.extend(n);
            acc
        })
    });
    for note in &notes {
        println!("note: {note}");
    }
    assert!(problems.is_empty(), "embedded kernels ({by}):\n{}", problems.join("\n"));
    println!(
        "{} embedded images checked against NVRTC {} ({} byte-identical, {} equivalent) in {:.1} s on {threads} threads",
        jobs.len(),
        nvrtc.version_string(),
        jobs.len() - notes.len(),
        notes.len(),
        start.elapsed().as_secs_f64()
    );
}

/// Fresh compilations of one image until one matches the embedded bytes (at most
/// [`ATTEMPTS`]):
/// `Ok(None)` when one does; `Ok(Some(note))` when none does but all share the
/// embedded image's target and functions (NVRTC's varying output; provenance is
/// then the build key's, checked above); `Err` otherwise.
fn compare(
    nvrtc: &nvrtc_lib::Nvrtc,
    module: &str,
    source: &str,
    headers: &[(&str, &str)],
    image: &embed::Image,
) -> Result<Option<String>, String> {
    let embedded = embedded::bytes(image)?;
    let output = match image.kind {
        Kind::Cubin => nvrtc_lib::Output::Cubin,
        Kind::Ptx => nvrtc_lib::Output::Ptx,
    };
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for _ in 0..ATTEMPTS {
        let (fresh, _log) = nvrtc
            .compile_to(module, source, headers, &image.target(), output)
            .map_err(|log| format!("kernels/{module}.cu for {}: {log}", image.target()))?;
        if fresh == embedded {
            return Ok(None);
        }
        if !seen.contains(&fresh) {
            seen.push(fresh);
        }
    }
    let same_interface = seen.iter().all(|f| interface(image, f) == interface(image, &embedded));
    if same_interface {
        Ok(Some(format!(
            "kernels/{module}.cu {}: {} distinct result(s) in {ATTEMPTS} compilations, none the embedded bytes (NVRTC's \
             output for this file varies between runs); target and functions agree, the build key matches",
            image.target(),
            seen.len()
        )))
    } else {
        Err(format!(
            "kernels/{module}.cu: the embedded {} has other functions or another target than what NVRTC {} \
             produces now; rebuild with cargo build",
            image.target(),
            nvrtc.version_string()
        ))
    }
}

/// Every kernel file without a minimum-architecture marker runs on the lowest
/// architecture (a T4, sm_75): its embedded PTX assembles for it. A tensor-core file
/// that lacks its `// lesionseg: min-arch sm_80` line fails here, named, instead of
/// at the first launch on a T4 (the driver's JIT would reject its bf16 and mma
/// instructions there).
#[test]
fn unmarked_files_assemble_for_the_lowest_architecture() {
    if embedded_or_skip().is_none() {
        return;
    }
    let Some(ptxas) = lesionseg::backend::cuda::probe::find_ptxas() else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but there is no ptxas");
        println!("SKIPPED: no ptxas");
        return;
    };
    let (modules, _) = disk_sources();
    let mut problems = Vec::new();
    for (module, source) in &modules {
        if embed::min_arch(source).unwrap() != embed::LOWEST_ARCH {
            continue;
        }
        let image = embedded::images_of(module).find(|i| i.kind == Kind::Ptx).expect("every file has PTX");
        let ptx = String::from_utf8_lossy(&embedded::bytes(image).unwrap()).into_owned();
        let arch = format!("sm_{}", embed::LOWEST_ARCH);
        if let Err(e) = lesionseg::backend::cuda::ptxas::assemble(&ptxas, &ptx, &arch) {
            let first = e.lines().find(|l| l.contains("error")).unwrap_or("").trim().to_string();
            problems
                .push(format!("kernels/{module}.cu has no min-arch marker but does not assemble for {arch}: {first}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
