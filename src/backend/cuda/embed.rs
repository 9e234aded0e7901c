//! What is compiled ahead of time, for which GPUs, and how an image is recognised:
//! the rules `build.rs` (which includes this file) embeds the kernels by and the
//! loader (`loader.rs`) and the tests check them by. Plain `std`, no crate types.
//!
//! Every kernel file gets, compiled by NVRTC 13.0 with [`OPTIONS`](super::nvrtc_lib::OPTIONS):
//! - a cubin for each architecture of [`CUBIN_ARCHS`] it supports (A100, A10/3090,
//!   Jetson Orin, L4/4090, H100/H200): loaded as is, no JIT;
//! - PTX for its minimum architecture (`compute_75`, or `compute_80` for a file
//!   marked `// lesionseg: min-arch sm_80`), which the driver JIT-compiles for any
//!   GPU at least that new that has no cubin here (T4, newer generations).
//!
//! The minimum architecture is declared in the source ([`min_arch`]): a file using
//! tensor-core instructions (mma, ldmatrix, bf16 conversions: sm_80) says so within
//! its first [`MARKER_LINES`] lines; a file without the marker runs on
//! [`LOWEST_ARCH`]. So a T4 (sm_75) loads the f32 modules and is refused the rest
//! with a clear error.

/// Real architectures that get a cubin (when the module supports them).
pub const CUBIN_ARCHS: &[u32] = &[80, 86, 87, 89, 90];
/// The oldest architecture the kernels support (Turing, T4): the PTX of a module
/// without a marker targets it.
pub const LOWEST_ARCH: u32 = 75;
/// The marker text, after `//`: `// lesionseg: min-arch sm_80`.
pub const MARKER: &str = "lesionseg: min-arch";
/// The marker is looked for in this many first lines.
pub const MARKER_LINES: usize = 20;

/// The two kinds of embedded image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An ELF cubin for one real architecture.
    Cubin,
    /// PTX text for a virtual architecture, JIT-compiled by the driver.
    Ptx,
}

/// Bump to invalidate every cached image (a change in how they are made).
pub const BUILD_VERSION: &str = "lesionseg-aot-1";

/// One embedded image of one kernel file.
#[derive(Clone, Copy, Debug)]
pub struct Image {
    /// The kernel file without `.cu`.
    pub module: &'static str,
    /// [`source_hash`] of the file and `common.cuh` it was compiled from.
    pub source_hash: u64,
    /// [`build_key`] of the compilation that made it (source, header, target,
    /// options, NVRTC version).
    pub build_key: u64,
    /// Cubin or PTX.
    pub kind: Kind,
    /// The architecture number: 90 for `sm_90` (cubin) or `compute_90` (PTX).
    pub arch: u32,
    /// The image, zlib-compressed (cubins are ~4x smaller so; every test executable
    /// carries them).
    pub zlib: &'static [u8],
}

impl Image {
    /// `sm_90` or `compute_80`.
    pub fn target(&self) -> String {
        target_name(self.kind, self.arch)
    }
}

/// `sm_90` for a cubin, `compute_80` for PTX.
pub fn target_name(kind: Kind, arch: u32) -> String {
    match kind {
        Kind::Cubin => format!("sm_{arch}"),
        Kind::Ptx => format!("compute_{arch}"),
    }
}

/// The minimum architecture `source` declares (`// lesionseg: min-arch sm_80` in
/// its first [`MARKER_LINES`] lines; [`LOWEST_ARCH`] without one). A marker that
/// does not parse, or names an architecture below the lowest, is an error (a typo
/// must not silently make a tensor-core file look portable).
pub fn min_arch(source: &str) -> Result<u32, String> {
    for (i, line) in source.lines().take(MARKER_LINES).enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("//").map(str::trim_start) else { continue };
        let Some(value) = rest.strip_prefix(MARKER) else { continue };
        let value = value.trim();
        let arch = value.strip_prefix("sm_").and_then(|v| v.parse::<u32>().ok());
        return match arch {
            Some(a) if a >= LOWEST_ARCH => Ok(a),
            _ => Err(format!("line {}: `// {MARKER} {value}`: expected `sm_XY` with XY at least {LOWEST_ARCH}", i + 1)),
        };
    }
    Ok(LOWEST_ARCH)
}

/// The images a module of minimum architecture `min` gets: (kind, arch), cubins
/// first in ascending order, then its PTX.
pub fn targets(min: u32) -> Vec<(Kind, u32)> {
    let mut t: Vec<(Kind, u32)> = CUBIN_ARCHS.iter().filter(|&&a| a >= min).map(|&a| (Kind::Cubin, a)).collect();
    t.push((Kind::Ptx, min));
    t
}

/// FNV-1a (64-bit) over the parts, each followed by a 0xff separator byte (which
/// never occurs in UTF-8), so that ("ab","c") and ("a","bc") differ.
pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The identity of a kernel file as compiled: its text and the `(name, text)` of
/// every header of `kernels/` (`common.cuh`, `tile.cuh`, ...). An embedded image is
/// used only for sources with this hash.
pub fn source_hash(source: &str, headers: &[(&str, &str)]) -> u64 {
    let mut parts = vec![source.as_bytes()];
    for (name, text) in headers {
        parts.extend([name.as_bytes(), text.as_bytes()]);
    }
    fnv(&parts)
}

/// The identity of one compilation: everything the image depends on. The build
/// caches images under it; the tests recompute it from the sources on disk.
pub fn build_key(source: &str, headers: &[(&str, &str)], target: &str, options: &[&str], nvrtc_version: &str) -> u64 {
    let inputs = source_hash(source, headers).to_le_bytes();
    fnv(&[&inputs, target.as_bytes(), options.join(" ").as_bytes(), nvrtc_version.as_bytes(), BUILD_VERSION.as_bytes()])
}

/// The functions a cubin holds (its `.text.<name>` sections), in section order.
pub fn cubin_functions(elf: &[u8]) -> Result<Vec<String>, String> {
    cubin_arch(elf)?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    let bad = || "truncated ELF section table".to_string();
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28).ok_or_else(bad)?,
        u16_at(0x3a).ok_or_else(bad)?,
        u16_at(0x3c).ok_or_else(bad)?,
        u16_at(0x3e).ok_or_else(bad)?,
    );
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab = u64_at(header(shstrndx).ok_or_else(bad)? + 24).ok_or_else(bad)?;
    let mut out = Vec::new();
    for i in 0..shnum {
        let name_off = u32_at(header(i).ok_or_else(bad)?).ok_or_else(bad)?;
        let start = strtab.checked_add(name_off).ok_or_else(bad)?;
        let name = elf.get(start..).ok_or_else(bad)?;
        let name = &name[..name.iter().position(|&b| b == 0).ok_or_else(bad)?];
        if let Some(f) = name.strip_prefix(b".text.") {
            out.push(String::from_utf8_lossy(f).into_owned());
        }
    }
    Ok(out)
}

/// The real architecture a cubin was built for, from its ELF header: `Err` if it is
/// not a 64-bit little-endian CUDA ELF (machine 190). The SM number sits in
/// `e_flags` bits 8..16 from ELF ABI version 8 (CUDA 12.8 on), bits 0..8 before.
pub fn cubin_arch(elf: &[u8]) -> Result<u32, String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let machine = u16::from_le_bytes([elf[18], elf[19]]);
    if machine != 190 {
        return Err(format!("ELF machine {machine}, not CUDA (190)"));
    }
    let flags = u32::from_le_bytes([elf[48], elf[49], elf[50], elf[51]]);
    let abi_version = elf[8];
    Ok(if abi_version >= 8 { (flags >> 8) & 0xff } else { flags & 0xff })
}

/// The architecture a PTX text targets (`.target sm_80` → 80).
pub fn ptx_arch(ptx: &str) -> Option<u32> {
    let line = ptx.lines().find_map(|l| l.trim_start().strip_prefix(".target "))?;
    let arch = line.split([',', ' ']).next()?.strip_prefix("sm_")?;
    arch.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_decides_the_minimum_architecture() {
        let plain = "// kernels.cu — something\n#include \"common.cuh\"\nKERNEL(k)(float* y) {}\n";
        assert_eq!(min_arch(plain), Ok(LOWEST_ARCH));
        let marked = "// x.cu — tensor cores\n//\n//   lesionseg: min-arch sm_80   \n#include \"common.cuh\"\n";
        assert_eq!(min_arch(marked), Ok(80));
        let hopper = "// lesionseg: min-arch sm_90\n";
        assert_eq!(min_arch(hopper), Ok(90));
        // Past the first 20 lines it is not a declaration (a comment about one).
        let late = format!("{}// lesionseg: min-arch sm_80\n", "//\n".repeat(MARKER_LINES));
        assert_eq!(min_arch(&late), Ok(LOWEST_ARCH));
        // Not in a comment: not a marker.
        assert_eq!(min_arch("const char* s = \"lesionseg: min-arch sm_80\";\n"), Ok(LOWEST_ARCH));
        for bad in ["// lesionseg: min-arch 80\n", "// lesionseg: min-arch sm_70\n", "// lesionseg: min-arch sm_\n"] {
            assert!(min_arch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_follow_the_minimum() {
        let portable = targets(LOWEST_ARCH);
        let cubins: Vec<u32> = portable.iter().filter(|t| t.0 == Kind::Cubin).map(|t| t.1).collect();
        assert_eq!(cubins, [80, 86, 87, 89, 90]);
        assert_eq!(portable.last(), Some(&(Kind::Ptx, 75)));
        assert_eq!(targets(80).last(), Some(&(Kind::Ptx, 80)));
        assert_eq!(targets(90), [(Kind::Cubin, 90), (Kind::Ptx, 90)]);
        assert_eq!(target_name(Kind::Cubin, 87), "sm_87");
        assert_eq!(target_name(Kind::Ptx, 80), "compute_80");
    }

    #[test]
    fn hashes_separate_parts() {
        assert_ne!(fnv(&[b"ab", b"c"]), fnv(&[b"a", b"bc"]));
        assert_ne!(source_hash("x", &[("h.cuh", "y")]), source_hash("x", &[("h.cuh", "z")]));
        assert_ne!(source_hash("x", &[("a.cuh", "y")]), source_hash("x", &[("b.cuh", "y")]));
    }

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        (elf[4], elf[5], elf[8]) = (2, 1, 8);
        elf[18..20].copy_from_slice(&190u16.to_le_bytes());
        elf[48..52].copy_from_slice(&0x0a00_5a04u32.to_le_bytes()); // NVRTC 13.0, sm_90
        assert_eq!(cubin_arch(&elf), Ok(90));
        elf[48..52].copy_from_slice(&0x0a00_5704u32.to_le_bytes());
        assert_eq!(cubin_arch(&elf), Ok(87));
        elf[8] = 7; // the older ABI: the number in the low byte
        elf[48..52].copy_from_slice(&0x0050_0550u32.to_le_bytes());
        assert_eq!(cubin_arch(&elf), Ok(0x50));
        elf[18] = 62; // x86-64
        assert!(cubin_arch(&elf).is_err());
        assert!(cubin_arch(b"//\n.version 9.0\n.target sm_80\n").is_err());
        assert_eq!(ptx_arch("//\n.version 9.0\n.target sm_80\n.address_size 64\n"), Some(80));
        assert_eq!(ptx_arch(".target sm_90a, debug\n"), Some(90));
    }
}
