//! Assembling PTX with `ptxas -v` to see what the driver's JIT will make of each
//! kernel on a given GPU generation: registers, shared memory, stack and spills
//! per entry point. Used by `lesionseg info` and `tests/nvrtc.rs` on machines
//! without a GPU.

use std::path::Path;
use std::process::Command;

/// What `ptxas -v` reports for one entry point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryStats {
    /// The entry point.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory, bytes.
    pub smem_bytes: u32,
    /// Stack frame, bytes per thread.
    pub stack_bytes: u32,
    /// Bytes stored to local memory for spills.
    pub spill_stores: u32,
    /// Bytes loaded back from spills.
    pub spill_loads: u32,
}

impl EntryStats {
    /// Whether the compiler spilled registers to local memory.
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// The `release X.Y, VX.Y.Z` part of `ptxas --version`, if it runs.
pub fn version(ptxas: &Path) -> Option<String> {
    let out = Command::new(ptxas).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.split_once("release ").map(|(_, v)| v.trim().to_string()))
}

/// Assembles `ptx` for `arch` (`sm_90`) with `ptxas -v`; the statistics of every
/// entry point, or the assembler's messages.
pub fn assemble(ptxas: &Path, ptx: &str, arch: &str) -> Result<Vec<EntryStats>, String> {
    let dir = std::env::temp_dir().join(format!("lesionseg-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stem = format!("{arch}-{:016x}", super::nvrtc::cache_key(&[ptx]));
    let input = dir.join(format!("{stem}.ptx"));
    let output = dir.join(format!("{stem}.cubin"));
    std::fs::write(&input, ptx).map_err(|e| format!("{}: {e}", input.display()))?;
    let run = Command::new(ptxas).arg(format!("-arch={arch}")).arg("-v").arg(&input).arg("-o").arg(&output).output();
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let out = run.map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!("ptxas -arch={arch} failed ({}):\n{text}", out.status));
    }
    Ok(parse_verbose(&text))
}

/// Parses `ptxas -v` output:
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem, 380 bytes cmem[0]
/// ```
pub fn parse_verbose(text: &str) -> Vec<EntryStats> {
    let mut out: Vec<EntryStats> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split_once("Compiling entry function '").map(|(_, r)| r) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(EntryStats { name: name.to_string(), ..Default::default() });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack_bytes = number_before(line, "bytes stack frame");
            cur.spill_stores = number_before(line, "bytes spill stores");
            cur.spill_loads = number_before(line, "bytes spill loads");
        } else if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_after(line, "Used ");
            cur.smem_bytes = number_before(line, "bytes smem");
        }
    }
    out
}

/// The integer just before `marker` in `line` (0 when absent).
fn number_before(line: &str, marker: &str) -> u32 {
    line.split_once(marker)
        .and_then(|(head, _)| head.trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

/// The integer just after `marker` in `line` (0 when absent).
fn number_after(line: &str, marker: &str) -> u32 {
    line.split_once(marker)
        .and_then(|(_, tail)| tail.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

/// A fixed-width table of `(module, arch, stats)` rows, spills marked.
pub fn table(rows: &[(String, String, EntryStats)]) -> String {
    let width = rows.iter().map(|(_, _, s)| s.name.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<10} {:<7} {:<width$} {:>5} {:>8} {:>6} {:>7} {:>7}\n",
        "module", "arch", "entry", "regs", "smem B", "stack", "spill>", "spill<"
    );
    for (module, arch, s) in rows {
        out += &format!(
            "{:<10} {:<7} {:<width$} {:>5} {:>8} {:>6} {:>7} {:>7}{}\n",
            module,
            arch,
            s.name,
            s.registers,
            s.smem_bytes,
            s.stack_bytes,
            s.spill_stores,
            s.spill_loads,
            if s.spills() { "  SPILLS" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose() {
        let text = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'conv2d_fwd_f32' for 'sm_90'\n\
            ptxas info    : Function properties for conv2d_fwd_f32\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 128 registers, used 1 barriers, 16384 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'pool_f32' for 'sm_90'\n\
            ptxas info    : Function properties for pool_f32\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 10 registers, used 0 barriers, 380 bytes cmem[0]\n";
        let s = parse_verbose(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            EntryStats {
                name: "conv2d_fwd_f32".into(),
                registers: 128,
                smem_bytes: 16384,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert!(s[0].spills());
        assert_eq!((s[1].registers, s[1].smem_bytes, s[1].spills()), (10, 0, false));
    }
}
