//! The machine code (SASS) of each kernel on a GPU generation, without a GPU: NVRTC's
//! PTX assembled to a cubin by ptxas (the assembler the driver's JIT embeds, same
//! version), disassembled by `nvdisasm`, and summarised per entry point as an
//! instruction mix: of the whole kernel and of its main loop, the loop (a backward
//! branch) that holds the most tensor-core, then FP32, then memory instructions.
//! With the tracer's dynamic counts this gives the performance model an instruction
//! count and an FP32 FLOP count per launch (`crate::perfmodel`).
//!
//! `nvdisasm` comes from NVIDIA's `nvidia-cuda-nvdisasm` wheel, which
//! `scripts/test.sh` installs into `.cache/nvdisasm`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ptxas::{self, EntryStats};

/// `nvdisasm`: `$LESIONSEG_NVDISASM`, the CUDA toolkit's `bin/`, this repository's
/// `.cache/nvdisasm` wheel, a Python site's `nvidia-cuda-nvdisasm` wheel, `PATH`.
pub fn find_nvdisasm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LESIONSEG_NVDISASM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> =
        ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(std::env::var_os).map(|r| PathBuf::from(r).join("bin")).collect();
    dirs.push(PathBuf::from("/usr/local/cuda/bin"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for base in [repo.join(".cache/nvdisasm")].into_iter().chain(super::probe::site_dirs()) {
        dirs.extend(["cu13", "cuda_nvdisasm"].iter().map(|p| base.join("nvidia").join(p).join("bin")));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join("nvdisasm")).find(|p| p.is_file())
}

/// The `release X.Y, VX.Y.Z` part of a tool's `--version`.
pub fn tool_version(tool: &Path) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.split_once("release ").map(|(_, v)| v.trim().to_string()))
}

/// A scratch file removed when dropped.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ptx` assembled for `arch` and disassembled: the SASS text and ptxas's statistics.
pub fn sass(ptxas: &Path, nvdisasm: &Path, ptx: &str, arch: &str) -> Result<(String, Vec<EntryStats>), String> {
    let dir = std::env::temp_dir().join(format!("lesionseg-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stem = format!("{arch}-{:016x}", super::nvrtc::cache_key(&[ptx]));
    let (input, cubin) = (Scratch(dir.join(format!("{stem}.ptx"))), Scratch(dir.join(format!("{stem}.cubin"))));
    std::fs::write(&input.0, ptx).map_err(|e| format!("{}: {e}", input.0.display()))?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&input.0)
        .arg("-o")
        .arg(&cubin.0)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!("ptxas -arch={arch} failed ({}):\n{log}", out.status));
    }
    let dis = Command::new(nvdisasm)
        .arg("-c")
        .arg(&cubin.0)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvdisasm.display()))?;
    if !dis.status.success() {
        return Err(format!("nvdisasm failed ({}): {}", dis.status, String::from_utf8_lossy(&dis.stderr)));
    }
    Ok((String::from_utf8_lossy(&dis.stdout).into_owned(), ptxas::parse_verbose(&log)))
}

/// One SASS instruction: its byte offset in the function and its opcode with
/// modifiers (`HMMA.16816.F32.BF16`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instr {
    /// Byte offset in the function.
    pub offset: u32,
    /// Opcode and modifiers, without predicate and operands.
    pub opcode: String,
    /// The branch target's offset, for a branch to a label of this function.
    pub target: Option<u32>,
}

/// Every function of an `nvdisasm -c` listing: name → instructions in order.
pub fn parse(text: &str) -> HashMap<String, Vec<Instr>> {
    let mut funcs: HashMap<String, Vec<Instr>> = HashMap::new();
    // Labels and the offset of the instruction that follows each, per function.
    let mut labels: HashMap<String, HashMap<String, u32>> = HashMap::new();
    let mut pending: Vec<String> = Vec::new();
    let mut branches: Vec<(String, usize, String)> = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix(".text.").and_then(|r| r.strip_suffix(':')) {
            cur = Some(name.to_string());
            funcs.entry(name.to_string()).or_default();
            pending.clear();
            continue;
        }
        let Some(f) = cur.clone() else { continue };
        if t.starts_with(".L") && t.ends_with(':') {
            pending.push(t.trim_end_matches(':').to_string());
            continue;
        }
        // `/*0a30*/  @!P0 BRA `(.L_x_3) ;`
        let Some(rest) = t.strip_prefix("/*") else { continue };
        let Some((off, body)) = rest.split_once("*/") else { continue };
        let Ok(offset) = u32::from_str_radix(off.trim(), 16) else { continue };
        let mut words = body.split_whitespace().filter(|w| !w.starts_with('@') && *w != "{" && *w != "}");
        let Some(opcode) = words.next() else { continue };
        let opcode = opcode.trim_end_matches(';').to_string();
        let list = funcs.get_mut(&f).expect("function registered");
        for l in pending.drain(..) {
            labels.entry(f.clone()).or_default().insert(l, offset);
        }
        if let Some(label) = body.split("`(").nth(1).and_then(|r| r.split(')').next()) {
            branches.push((f.clone(), list.len(), label.to_string()));
        }
        list.push(Instr { offset, opcode, target: None });
    }
    for (f, i, label) in branches {
        let target = labels.get(&f).and_then(|l| l.get(&label)).copied();
        if let Some(list) = funcs.get_mut(&f) {
            list[i].target = target;
        }
    }
    funcs
}

/// Instruction classes of the mix, in table order.
pub const CLASSES: [&str; 12] =
    ["HMMA", "LDSM", "LDS", "STS", "LDG", "LDGSTS", "STG", "FFMA", "FP32", "INT", "BRA", "BAR"];

/// The class of an opcode (`None`: other, e.g. conversions, predicates, NOP).
pub fn class(opcode: &str) -> Option<usize> {
    let op = opcode.split('.').next().unwrap_or(opcode);
    let c = match op {
        "HMMA" => "HMMA",
        "LDSM" => "LDSM",
        "LDS" => "LDS",
        "STS" => "STS",
        "LDG" | "LD" => "LDG",
        "LDGSTS" => "LDGSTS",
        "STG" | "ST" => "STG",
        "FFMA" => "FFMA",
        "FADD" | "FMUL" | "FMNMX" | "FSETP" | "FSEL" => "FP32",
        "IMAD" | "IADD3" | "IADD" | "LEA" | "SHF" | "SHL" | "SHR" | "LOP3" | "LOP" | "ISETP" | "IMNMX" | "SEL"
        | "MOV" | "PRMT" | "IABS" | "IMUL" | "S2R" | "CS2R" | "S2UR" | "LDC" | "ULDC" | "UMOV" | "UIADD3" | "ULEA"
        | "USHF" | "ULOP3" | "UIMAD" | "UISETP" | "VIADD" | "IMNMX3" | "I2F" | "F2I" | "POPC" | "FLO" | "BREV" => "INT",
        "BRA" | "BRX" | "EXIT" | "RET" | "CALL" | "BSSY" | "BSYNC" | "WARPSYNC" | "JMP" => "BRA",
        "BAR" => "BAR",
        _ => return None,
    };
    CLASSES.iter().position(|k| *k == c)
}

/// Instruction counts by class (see [`CLASSES`]) and in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    /// Per class of [`CLASSES`].
    pub counts: [u32; 12],
    /// Every instruction, other classes included.
    pub total: u32,
}

impl Mix {
    fn of(instrs: &[Instr]) -> Mix {
        let mut m = Mix::default();
        for i in instrs {
            m.total += 1;
            if let Some(c) = class(&i.opcode) {
                m.counts[c] += 1;
            }
        }
        m
    }

    /// The count of class `name`.
    pub fn get(&self, name: &str) -> u32 {
        CLASSES.iter().position(|k| *k == name).map_or(0, |i| self.counts[i])
    }

    /// Memory instructions (LDSM, LDS, STS, LDG, LDGSTS, STG).
    pub fn memory(&self) -> u32 {
        ["LDSM", "LDS", "STS", "LDG", "LDGSTS", "STG"].iter().map(|k| self.get(k)).sum()
    }
}

/// One entry point's SASS summary.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSass {
    /// The entry point.
    pub name: String,
    /// ptxas's registers, shared memory, spills.
    pub stats: EntryStats,
    /// The whole function.
    pub whole: Mix,
    /// The main loop ([`main_loop`]), if the function has a loop.
    pub main_loop: Option<Mix>,
    /// Its `__launch_bounds__` thread count (the PTX `.maxntid`), if it has one.
    pub max_threads: Option<u32>,
}

/// The `.maxntid` of each entry point of `ptx` that declares one.
pub fn ptx_max_threads(ptx: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let mut entry: Option<String> = None;
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(rest) = t.split_once(".entry ").map(|(_, r)| r) {
            entry = Some(rest.split('(').next().unwrap_or("").trim().to_string());
        } else if let (Some(n), Some(e)) = (t.strip_prefix(".maxntid"), &entry) {
            if let Some(v) = n.split(',').next().and_then(|v| v.trim().parse().ok()) {
                out.insert(e.clone(), v);
            }
        } else if t.starts_with('{') {
            entry = None;
        }
    }
    out
}

/// The main loop of a function: of the loops (a branch back to an earlier offset,
/// spanning target..branch), the one with the most HMMA, then FFMA, then memory
/// instructions; among equals, the shortest (the innermost). Memory does not count
/// between tensor-core loops: a kernel with two copies of its K-loop (conv2d_mma.cu:
/// 16-byte loads known at compile time, and the general copy with the scalar path
/// inside) is measured on the shorter, the copy its large layers run.
pub fn main_loop(instrs: &[Instr]) -> Option<&[Instr]> {
    // (HMMA, FFMA, memory unless HMMA, shorter first): the larger key wins.
    type Key = (u32, u32, u32, std::cmp::Reverse<usize>);
    let mut best: Option<(&[Instr], Key)> = None;
    for (end, i) in instrs.iter().enumerate() {
        let Some(t) = i.target.filter(|&t| t <= i.offset) else { continue };
        let start = instrs.partition_point(|x| x.offset < t);
        let body = &instrs[start..=end];
        let m = Mix::of(body);
        let memory = if m.get("HMMA") > 0 { 0 } else { m.memory() };
        let key = (m.get("HMMA"), m.get("FFMA"), memory, std::cmp::Reverse(body.len()));
        if best.as_ref().is_none_or(|(_, k)| key > *k) {
            best = Some((body, key));
        }
    }
    best.map(|(b, _)| b)
}

/// The SASS summary of every entry point in `text` with its ptxas statistics.
pub fn summarize(text: &str, stats: &[EntryStats]) -> Vec<KernelSass> {
    let funcs = parse(text);
    let mut out: Vec<KernelSass> = stats
        .iter()
        .filter_map(|s| {
            let instrs = funcs.get(&s.name)?;
            Some(KernelSass {
                name: s.name.clone(),
                stats: s.clone(),
                whole: Mix::of(instrs),
                main_loop: main_loop(instrs).map(Mix::of),
                max_threads: None,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A fixed-width table of main-loop mixes: `(module, arch, kernel)` rows.
pub fn table(rows: &[(String, String, KernelSass)]) -> String {
    let width = rows.iter().map(|(_, _, k)| k.name.len()).max().unwrap_or(6).max(6);
    let mut s = format!("{:<10} {:<6} {:<width$} {:>4} {:>6}  loop:", "module", "arch", "kernel", "regs", "smem");
    for c in CLASSES {
        s += &format!(" {c:>6}");
    }
    s += &format!(" {:>6} {:>6}\n", "other", "total");
    for (module, arch, k) in rows {
        s += &format!(
            "{module:<10} {arch:<6} {:<width$} {:>4} {:>6}       ",
            k.name, k.stats.registers, k.stats.smem_bytes
        );
        match &k.main_loop {
            Some(m) => {
                for c in m.counts {
                    s += &format!(" {c:>6}");
                }
                let other = m.total - m.counts.iter().sum::<u32>();
                s += &format!(" {other:>6} {:>6}\n", m.total);
            }
            None => s += &format!(" (no loop; {} instructions in all)\n", k.whole.total),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\t.section\t.text.k,\"ax\",@progbits\n.text.k:\n\
        /*0000*/                   S2R R0, SR_TID.X ;\n\
        .L_x_1:\n\
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;\n\
        /*0020*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;\n\
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;\n\
        .L_x_2:\n\
        /*0040*/                   FFMA R1, R2, R3, R1 ;\n\
        /*0050*/              @P1 BRA `(.L_x_2) ;\n\
        /*0060*/              @P0 BRA `(.L_x_1) ;\n\
        /*0070*/                   EXIT ;\n";

    #[test]
    fn finds_the_loop_with_the_tensor_work() {
        let f = parse(LISTING);
        let k = &f["k"];
        assert_eq!(k.len(), 8);
        assert_eq!((k[5].target, k[6].target), (Some(0x40), Some(0x10)));
        let body = main_loop(k).unwrap();
        assert_eq!(body.first().unwrap().offset, 0x10, "the outer loop holds the HMMA");
        let m = Mix::of(body);
        assert_eq!(
            (m.get("HMMA"), m.get("LDG"), m.get("BAR"), m.get("FFMA"), m.get("BRA"), m.total),
            (1, 1, 1, 1, 2, 6)
        );
    }
}
