//! Loading a dataset through a decoded cache, the way the paper preprocesses into h5:
//! the first run decodes and resizes every sample (in parallel, with a progress bar)
//! into ONE file; later runs read that file and decode no JPEG.
//!
//! The cache lives in `<data>/.lesionseg-cache/` (or [`LoadOptions::cache_dir`]) as
//! `isic-<size>-<fingerprint>.bin`. The fingerprint hashes the format version, the size
//! and, for every image and expected mask, its folder/file name, length and mtime (or
//! its absence), so touching, adding, removing or replacing a source file, or asking for
//! another size, selects another file and the cache is rebuilt. Writes go to a temporary
//! name and are renamed into place; older caches of the same size are then removed. A
//! cache that is short, corrupt (checksum) or of another version is rebuilt, never
//! trusted; a cache that cannot be written is a note in the report, not an error.
//!
//! Bad samples: the cache holds only the good ones and, in its header, the list of
//! skipped ones with their reasons. A later run with `skip_bad` reports them again as
//! warnings; a run without it fails with the first one's error, exactly as a fresh
//! decode would. So the skip flag need not be part of the fingerprint.
//!
//! File layout (little-endian): magic `LSEGDATA`, then u32 version, size, n, n_skipped,
//! u64 fingerprint, meta length, checksum; meta (ids, then skipped entries as kind byte,
//! id, path, reason; strings as u32 length + UTF-8); images `[n][size][size][3]`; packed
//! masks `[n][size][size]`. The checksum covers everything after the header.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use rayon::prelude::*;

use super::isic::{decode_sample, discover, Dataset, Sample, SkipKind, Skipped};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"LSEGDATA";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;

/// How [`load`] behaves.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Leave out samples that fail to decode (one warning line each) instead of failing.
    pub skip_bad: bool,
    /// Where the cache lives; `None` is `<data>/.lesionseg-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Read and write the cache; `false` decodes every time and writes nothing.
    pub use_cache: bool,
    /// Show a progress bar while decoding (only drawn on a terminal).
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { skip_bad: false, cache_dir: None, use_cache: true, progress: true }
    }
}

/// What [`load`] did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Samples in the dataset.
    pub samples: usize,
    /// Side of the images.
    pub size: usize,
    /// Whether the data came from the cache (no image was decoded).
    pub from_cache: bool,
    /// The cache file read or written, if any.
    pub cache_path: Option<PathBuf>,
    /// Samples left out with `skip_bad`, in id order.
    pub skipped: Vec<Skipped>,
    /// Other things worth telling: ignored folders, why a cache was rebuilt, a failed write.
    pub notes: Vec<String>,
    /// Wall time of the whole load.
    pub seconds: f64,
}

impl LoadReport {
    /// One line: how many samples, from where, how long, and the skips by kind.
    pub fn summary(&self) -> String {
        let source = if self.from_cache { "from cache" } else { "decoded" };
        let mut s =
            format!("{} samples at {}x{} {source} in {:.2} s", self.samples, self.size, self.size, self.seconds);
        if let Some(p) = &self.cache_path {
            s += &format!(" ({})", p.display());
        }
        if !self.skipped.is_empty() {
            let mut kinds: Vec<(SkipKind, usize)> = Vec::new();
            for sk in &self.skipped {
                match kinds.iter_mut().find(|(k, _)| *k == sk.kind) {
                    Some((_, c)) => *c += 1,
                    None => kinds.push((sk.kind, 1)),
                }
            }
            kinds.sort();
            let parts: Vec<String> = kinds.iter().map(|(k, c)| format!("{c} {}", k.describe())).collect();
            s += &format!("; skipped {}: {}", self.skipped.len(), parts.join(", "));
        }
        s
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// What [`load`] will do, found before anything is decoded: the samples, and the
/// cache file (whether a current one exists, and what writing one would take), so
/// that a caller can check memory and disk first.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    data: PathBuf,
    size: usize,
    found: super::isic::Discovery,
    fp: u64,
    cache_path: Option<PathBuf>,
}

impl LoadPlan {
    /// The samples found (before any is decoded, so bad ones are still in).
    pub fn samples(&self) -> &[Sample] {
        &self.found.samples
    }

    /// The cache file that will be read or written, if caching.
    pub fn cache_path(&self) -> Option<&Path> {
        self.cache_path.as_deref()
    }

    /// Bytes the decoded dataset takes in memory (RGB and packed masks).
    pub fn memory_bytes(&self) -> u64 {
        self.samples().len() as u64 * (self.size * self.size) as u64 * 4
    }

    /// Bytes the cache file needs on disk; 0 when a current one exists.
    pub fn cache_bytes_to_write(&self) -> u64 {
        match &self.cache_path {
            Some(p) if !p.exists() => HEADER_LEN as u64 + self.memory_bytes() + 64 * self.samples().len() as u64,
            _ => 0,
        }
    }
}

/// Finds the samples under `data` and the cache for `size` (nothing is decoded).
pub fn plan(data: &Path, size: usize, opts: &LoadOptions) -> Result<LoadPlan> {
    if size == 0 || size > 1 << 14 {
        return Err(Error::argument("--size", format!("{size} is out of range (range: 1 to 16384)")));
    }
    let found = discover(data)?;
    let fp = fingerprint(&found.samples, size);
    let cache_path = opts.use_cache.then(|| {
        let dir = opts.cache_dir.clone().unwrap_or_else(|| data.join(".lesionseg-cache"));
        dir.join(format!("isic-{size}-{fp:016x}.bin"))
    });
    Ok(LoadPlan { data: data.to_path_buf(), size, found, fp, cache_path })
}

/// Loads the ISIC folders under `data` at `size`x`size`, from the cache when it is
/// current, else by decoding (and then writing the cache).
pub fn load(data: &Path, size: usize, opts: &LoadOptions) -> Result<(Dataset, LoadReport)> {
    load_planned(plan(data, size, opts)?, opts)
}

/// [`load`] from a [`plan`] already made.
pub fn load_planned(plan: LoadPlan, opts: &LoadOptions) -> Result<(Dataset, LoadReport)> {
    let start = Instant::now();
    let LoadPlan { data, size, found, fp, cache_path } = plan;
    let data = data.as_path();
    let mut report = LoadReport { size, ..Default::default() };
    for dir in &found.ignored_inputs {
        report.notes.push(format!("ignored {} (no ground-truth folder of its variant)", dir.display()));
    }
    let cached = match &cache_path {
        Some(path) if path.exists() => match read_cache(path, size, fp) {
            Ok(hit) => Some(hit),
            Err(why) => {
                report.notes.push(format!("rebuilt cache {}: {why}", path.display()));
                None
            }
        },
        _ => None,
    };
    let (ds, skipped) = match cached {
        Some(hit) => {
            report.from_cache = true;
            hit
        }
        None => {
            let (ds, skipped) = decode_all(&found.samples, size, opts)?;
            if let Some(path) = &cache_path {
                if let Err(e) = write_cache(path, fp, &ds, &skipped) {
                    report.notes.push(format!("could not write the cache: {e}"));
                }
            }
            (ds, skipped)
        }
    };
    if !opts.skip_bad && !skipped.is_empty() {
        return Err(bad_samples(data, &skipped));
    }
    if ds.is_empty() {
        let reason = format!("every one of the {} samples was skipped as bad", skipped.len());
        return Err(Error::Data { path: data.to_owned(), reason });
    }
    for sk in &skipped {
        eprintln!("warning: skipping ISIC_{}: {}", sk.id, sk.to_error());
    }
    report.cache_path = cache_path.filter(|p| p.exists());
    report.samples = ds.len();
    report.skipped = skipped;
    report.seconds = start.elapsed().as_secs_f64();
    Ok((ds, report))
}

/// One error naming every bad sample (the first ten, then a count), with the way
/// out; a single bad sample keeps its own error, with the hint added.
fn bad_samples(data: &Path, skipped: &[Skipped]) -> Error {
    const HINT: &str = "fix or remove them, or pass --skip-bad to leave them out";
    if let [one] = skipped {
        return Error::Data { path: one.path.clone(), reason: format!("{}; {HINT}", one.reason) };
    }
    let mut list: Vec<String> =
        skipped.iter().take(10).map(|s| format!("{}: {}", s.path.display(), s.reason)).collect();
    if skipped.len() > 10 {
        list.push(format!("… and {} more", skipped.len() - 10));
    }
    let reason = format!("{} bad samples ({HINT}): {}", skipped.len(), list.join("; "));
    Error::Data { path: data.to_owned(), reason }
}

/// Decodes every sample in parallel; failures come back as [`Skipped`] entries.
fn decode_all(samples: &[Sample], size: usize, opts: &LoadOptions) -> Result<(Dataset, Vec<Skipped>)> {
    let (n, px) = (samples.len(), size * size);
    let mut images = vec![0u8; n * px * 3];
    let mut masks = vec![0u8; n * px];
    let bar = if opts.progress { indicatif::ProgressBar::new(n as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("decoding {n} samples at {size}x{size}"));
    // Every sample is decoded even after a failure, so that one error can name all
    // the bad files at once rather than one per run.
    let results: Vec<Option<Skipped>> = samples
        .par_iter()
        .zip(images.par_chunks_mut(px * 3))
        .zip(masks.par_chunks_mut(px))
        .map(|((s, img), mask)| {
            let r = decode_sample(s, size, img, mask).err();
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let skipped: Vec<Skipped> = results.iter().flatten().cloned().collect();
    // Close the gaps the skipped samples leave, keeping order.
    let mut ids = Vec::with_capacity(n);
    for (i, (s, r)) in samples.iter().zip(&results).enumerate() {
        if r.is_none() {
            let j = ids.len();
            images.copy_within(i * px * 3..(i + 1) * px * 3, j * px * 3);
            masks.copy_within(i * px..(i + 1) * px, j * px);
            ids.push(s.id.clone());
        }
    }
    images.truncate(ids.len() * px * 3);
    masks.truncate(ids.len() * px);
    Ok((Dataset::from_parts(size, ids, images, masks)?, skipped))
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x100_0000_01b3);
        }
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
}

/// The fingerprint of the sources at `size` (see the module doc).
pub fn fingerprint(samples: &[Sample], size: usize) -> u64 {
    let per_sample: Vec<u64> = samples
        .par_iter()
        .map(|s| {
            let mut h = Fnv::new();
            h.bytes(s.id.as_bytes());
            for path in std::iter::once(&s.image).chain(&s.masks) {
                // Folder and file name, not the full path, so a moved data folder keeps its cache.
                for part in path.iter().rev().take(2) {
                    h.bytes(part.as_encoded_bytes()).bytes(b"/");
                }
                match std::fs::metadata(path) {
                    Ok(m) => {
                        let mtime = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                        h.u64(m.len()).u64(mtime.map_or(0, |d| d.as_nanos() as u64));
                    }
                    Err(_) => {
                        h.bytes(b"missing");
                    }
                }
            }
            h.0
        })
        .collect();
    let mut h = Fnv::new();
    h.u64(VERSION as u64).u64(size as u64).u64(samples.len() as u64);
    for v in per_sample {
        h.u64(v);
    }
    h.0
}

/// A checksum of `data`: FNV of 1 MiB blocks in parallel, then of their hashes.
fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv::new();
    for part in parts {
        let blocks: Vec<u64> = part.par_chunks(1 << 20).map(|c| Fnv::new().bytes(c).0).collect();
        h.u64(part.len() as u64);
        for b in blocks {
            h.u64(b);
        }
    }
    h.0
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_cache(path: &Path, fp: u64, ds: &Dataset, skipped: &[Skipped]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::output::remove_stale_temps(dir);
    let mut meta = Vec::new();
    for id in &ds.ids {
        put_str(&mut meta, id);
    }
    for sk in skipped {
        meta.push(sk.kind.to_byte());
        put_str(&mut meta, &sk.id);
        put_str(&mut meta, &sk.path.to_string_lossy());
        put_str(&mut meta, &sk.reason);
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    for v in [VERSION, ds.size as u32, ds.len() as u32, skipped.len() as u32] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    for v in [fp, meta.len() as u64, checksum(&[&meta, ds.images(), ds.masks()])] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    crate::output::write_with(path, crate::output::Sync::Durable, |f| {
        for part in [&header[..], &meta, ds.images(), ds.masks()] {
            f.write_all(part)?;
        }
        Ok(())
    })?;
    remove_stale(dir, ds.size, path);
    Ok(())
}

/// Removes the other caches of this size: they describe sources that no longer exist.
fn remove_stale(dir: &Path, size: usize, keep: &Path) {
    let prefix = format!("isic-{size}-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.flatten().map(|e| e.path()) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path != keep && name.starts_with(&prefix) && name.ends_with(".bin") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Reads a cache; any inconsistency is an `Err` with the reason, and the caller rebuilds.
fn read_cache(path: &Path, size: usize, fp: u64) -> std::result::Result<(Dataset, Vec<Skipped>), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; HEADER_LEN];
    f.read_exact(&mut header).map_err(|_| "shorter than its header".to_string())?;
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap_or_default()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or_default());
    if &header[..8] != MAGIC || u32_at(8) != VERSION as usize {
        return Err("not a lesionseg cache of this version".into());
    }
    let (n, n_skipped, meta_len, sum) = (u32_at(16), u32_at(20), u64_at(32), u64_at(40));
    if u32_at(12) != size || u64_at(24) != fp {
        return Err(format!("made for size {} and other sources", u32_at(12)));
    }
    // Check the length before allocating anything: a damaged header must not ask for terabytes.
    let px = (size * size) as u64;
    let expected = HEADER_LEN as u64 + meta_len + n as u64 * px * 4;
    if file_len != expected {
        return Err(format!("{file_len} bytes where the header implies {expected}"));
    }
    let mut read = |len: usize| -> std::result::Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    };
    let meta = read(meta_len as usize)?;
    let images = read(n * size * size * 3)?;
    let masks = read(n * size * size)?;
    if checksum(&[&meta, &images, &masks]) != sum {
        return Err("checksum mismatch".into());
    }
    let mut cur = Cursor(&meta);
    let ids = (0..n).map(|_| cur.string()).collect::<Option<Vec<_>>>().ok_or("bad id list")?;
    let skipped = (0..n_skipped)
        .map(|_| {
            let kind = SkipKind::from_byte(cur.take(1)?[0])?;
            let (id, path, reason) = (cur.string()?, cur.string()?, cur.string()?);
            Some(Skipped { id, kind, path: path.into(), reason })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("bad skip list")?;
    let ds = Dataset::from_parts(size, ids, images, masks).map_err(|e| e.to_string())?;
    Ok((ds, skipped))
}

/// Reads length-prefixed fields from the cache's meta section.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..len)?, self.0.get(len..)?);
        self.0 = rest;
        Some(head)
    }
    fn string(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}
