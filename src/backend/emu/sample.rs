//! Which blocks of a large launch the tracer runs, how many blocks each stands for,
//! and how the launch's unique bytes (its DRAM lower bound) follow from theirs.
//!
//! The plan is a star around the grid's centre block: the centre, and along each
//! dimension the first block, the last block and the centre's next neighbour (the
//! other coordinates at the centre). Along each dimension a block is "first", "last"
//! or "interior" (image edges and tile tails live in the first and last blocks; in a
//! split-K grid, z = first, interior and last are every slice kind); a block of the
//! grid is represented by the sample of its classes (the centre for all-interior;
//! with two or more non-interior dimensions, the arm of the first of them). Each
//! sample's counters are weighted by how many blocks it represents.
//!
//! Unique bytes cannot be scaled the same way: neighbouring blocks share a conv's
//! halo rows, every block along x reads the same weights. Instead each operand
//! (the sectors past one pointer argument) is assumed to move by a fixed translation
//! per block step along each dimension, measured between the centre and its
//! neighbour (0 for a broadcast operand; when the neighbour's footprint is not a
//! translate, the blocks are taken as disjoint), and the union of every block's
//! translated footprint is counted exactly on a bitmap of sectors.

use std::collections::HashMap;

use super::trace::Footprint;

/// Along one dimension of `g` blocks: (representative index, blocks it stands for).
fn weights_1d(g: u32) -> Vec<(u32, f64)> {
    let m = g / 2;
    let mut v = Vec::new();
    if m != 0 {
        v.push((0, 1.0));
    }
    if g - 1 != m {
        v.push((g - 1, 1.0));
    }
    let interior = f64::from(g) - v.len() as f64;
    if m + 1 < g.saturating_sub(1) {
        let half = (interior / 2.0).ceil();
        v.extend([(m, half), (m + 1, interior - half)]);
    } else {
        v.push((m, interior));
    }
    v
}

/// Along one dimension: (representative index, first index, last index) of each
/// class, the interior represented by the centre alone.
fn ranges_1d(g: u32) -> Vec<(u32, u32, u32)> {
    let m = g / 2;
    let mut v = Vec::new();
    if m != 0 {
        v.push((0, 0, 0));
    }
    if g - 1 != m {
        v.push((g - 1, g - 1, g - 1));
    }
    let lo = u32::from(m != 0);
    let hi = if g - 1 != m { g - 2 } else { g - 1 };
    v.push((m, lo, hi));
    v
}

fn centre(grid: [u32; 3]) -> [u32; 3] {
    grid.map(|g| g / 2)
}

/// The sample for a block whose per-dimension representatives are `reps`: the
/// centre, moved along the first dimension whose representative is not the centre.
fn sample_of(grid: [u32; 3], reps: [u32; 3]) -> [u32; 3] {
    let mut b = centre(grid);
    if let Some(d) = (0..3).find(|&d| reps[d] != b[d]) {
        b[d] = reps[d];
    }
    b
}

/// The blocks to run and the weight of each (summing to the grid's block count),
/// in z, y, x order.
pub(crate) fn plan(grid: [u32; 3]) -> Vec<([u32; 3], f64)> {
    let per: Vec<Vec<(u32, f64)>> = grid.iter().map(|&g| weights_1d(g)).collect();
    let mut w: HashMap<[u32; 3], f64> = HashMap::new();
    for &(x, wx) in &per[0] {
        for &(y, wy) in &per[1] {
            for &(z, wz) in &per[2] {
                *w.entry(sample_of(grid, [x, y, z])).or_insert(0.0) += wx * wy * wz;
            }
        }
    }
    let mut v: Vec<([u32; 3], f64)> = w.into_iter().filter(|(_, w)| *w > 0.0).collect();
    v.sort_by_key(|(b, _)| [b[2], b[1], b[0]]);
    v
}

/// Unique bytes read and written when every block ran: the union of the footprints.
pub(crate) fn exact_unique(fps: &[Footprint]) -> (f64, f64) {
    let mut all: Vec<u64> = fps.iter().flat_map(|f| f.sectors.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    let written = all.iter().filter(|s| *s & 1 == 1).count();
    (32.0 * (all.len() - written) as f64, 32.0 * written as f64)
}

/// One operand's read or written sectors in one sampled block.
type Parts = HashMap<(usize, bool), Vec<u64>>;

/// A block's sectors split by operand (the last pointer argument at or below the
/// sector) and by read / written.
fn split(f: &Footprint, pointers: &[u64]) -> Parts {
    let mut parts: Parts = HashMap::new();
    for &s in &f.sectors {
        let sector = s >> 1;
        let op = pointers.partition_point(|&p| p >> 5 <= sector).saturating_sub(1);
        parts.entry((op, s & 1 == 1)).or_default().push(sector);
    }
    parts
}

/// The shift taking `a` onto `b` (both sorted), if `b` is mostly a translate of
/// `a`; otherwise one that places the blocks side by side.
fn translation(a: &[u64], b: &[u64]) -> i64 {
    let (Some(&a0), Some(&b0)) = (a.first(), b.first()) else { return 0 };
    let d = b0 as i64 - a0 as i64;
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        let x = a[i] as i64 + d;
        match x.cmp(&(b[j] as i64)) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => (i += 1, j += 1, common += 1).2,
        }
    }
    if 2 * common >= b.len() {
        d
    } else {
        (a[a.len() - 1] - a0 + 1) as i64
    }
}

/// Unique bytes read and written by the whole grid, estimated from the sampled
/// blocks' footprints (see the module doc); `pointers` are the launch's pointer
/// arguments.
pub(crate) fn estimate_unique(
    grid: [u32; 3],
    plan: &[([u32; 3], f64)],
    fps: &[Footprint],
    pointers: &[u64],
) -> (f64, f64) {
    let mut ptrs: Vec<u64> = pointers.iter().copied().filter(|&p| p != 0).collect();
    ptrs.sort_unstable();
    ptrs.dedup();
    let parts: HashMap<[u32; 3], Parts> = fps.iter().map(|f| (f.block, split(f, &ptrs))).collect();
    let c = centre(grid);
    let empty = Vec::new();
    let get = |b: [u32; 3], key: (usize, bool)| parts.get(&b).and_then(|p| p.get(&key)).unwrap_or(&empty);
    let keys: Vec<(usize, bool)> = {
        let mut k: Vec<(usize, bool)> = parts.values().flat_map(|p| p.keys().copied()).collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    debug_assert!(plan.iter().all(|(b, _)| parts.contains_key(b)));
    let ranges: Vec<Vec<(u32, u32, u32)>> = grid.iter().map(|&g| ranges_1d(g)).collect();
    let (mut read, mut written) = (0.0, 0.0);
    for key in keys {
        // The per-dimension translation of this operand, from the centre and its
        // neighbour.
        let mut delta = [0i64; 3];
        for d in 0..3 {
            if grid[d] < 2 {
                continue;
            }
            let (mut a, mut b) = (c, c);
            if c[d] + 1 < grid[d] {
                b[d] += 1;
            } else {
                a[d] -= 1;
            }
            delta[d] = translation(get(a, key), get(b, key));
        }
        let mut bits = SectorSet::default();
        for &(rx, x0, x1) in &ranges[0] {
            for &(ry, y0, y1) in &ranges[1] {
                for &(rz, z0, z1) in &ranges[2] {
                    let rep = sample_of(grid, [rx, ry, rz]);
                    let f = get(rep, key);
                    if f.is_empty() {
                        continue;
                    }
                    let span = |d: usize, lo: u32, hi: u32| if delta[d] == 0 { (rep[d], rep[d]) } else { (lo, hi) };
                    let ((xa, xb), (ya, yb), (za, zb)) = (span(0, x0, x1), span(1, y0, y1), span(2, z0, z1));
                    for z in za..=zb {
                        for y in ya..=yb {
                            for x in xa..=xb {
                                let shift = (i64::from(x) - i64::from(rep[0])) * delta[0]
                                    + (i64::from(y) - i64::from(rep[1])) * delta[1]
                                    + (i64::from(z) - i64::from(rep[2])) * delta[2];
                                bits.add(f, shift);
                            }
                        }
                    }
                }
            }
        }
        let bytes = 32.0 * bits.count() as f64;
        if key.1 {
            written += bytes;
        } else {
            read += bytes;
        }
    }
    (read, written)
}

/// A set of sector numbers: a bitmap over the range seen so far, grown on demand.
#[derive(Default)]
struct SectorSet {
    base: i64,
    words: Vec<u64>,
}

impl SectorSet {
    fn add(&mut self, sorted: &[u64], shift: i64) {
        let lo = sorted[0] as i64 + shift;
        let hi = sorted[sorted.len() - 1] as i64 + shift;
        self.cover(lo, hi);
        for &s in sorted {
            let i = (s as i64 + shift - self.base) as usize;
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    fn cover(&mut self, lo: i64, hi: i64) {
        if self.words.is_empty() {
            self.base = lo & !63;
            self.words = vec![0; ((hi - self.base) / 64 + 1) as usize];
            return;
        }
        if lo < self.base {
            let new_base = lo & !63;
            let extra = ((self.base - new_base) / 64) as usize;
            self.words.splice(0..0, std::iter::repeat_n(0, extra));
            self.base = new_base;
        }
        let need = ((hi - self.base) / 64 + 1) as usize;
        if need > self.words.len() {
            self.words.resize(need, 0);
        }
    }

    fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cover_the_grid() {
        for grid in [[1, 1, 1], [2, 1, 1], [3, 5, 1], [100, 7, 4], [9, 1, 33]] {
            let p = plan(grid);
            let total: f64 = p.iter().map(|(_, w)| w).sum();
            assert_eq!(total, f64::from(grid[0] * grid[1] * grid[2]), "{grid:?}");
            assert!(p.len() <= 10, "{grid:?}: {} samples", p.len());
            assert!(p.iter().all(|(b, _)| (0..3).all(|d| b[d] < grid[d])));
        }
        // Every split-K slice kind: first, interior and last z.
        let zs: Vec<u32> = plan([4, 4, 9]).iter().map(|(b, _)| b[2]).collect();
        assert!(zs.contains(&0) && zs.contains(&4) && zs.contains(&8), "{zs:?}");
    }

    /// Footprints of a synthetic 1-D launch: block b reads sectors [8b, 8b + 12) of
    /// operand 0 (overlapping its neighbour's, as a halo), every block the same 4 sectors
    /// of operand 1; it writes [8b, 8b + 8) of operand 2.
    fn synthetic(blocks: u32, which: &[[u32; 3]]) -> Vec<Footprint> {
        let (a, w, out) = (1000u64, 5000u64, 9000u64);
        which
            .iter()
            .map(|&blk| {
                let b = u64::from(blk[0]);
                let mut s: Vec<u64> = (8 * b..8 * b + 12).map(|i| (a + i) << 1).collect();
                s.extend((0..4).map(|i| (w + i) << 1));
                s.extend((8 * b..8 * b + 8).map(|i| (out + i) << 1 | 1));
                assert!(b < u64::from(blocks));
                s.sort_unstable();
                Footprint { block: blk, sectors: s }
            })
            .collect()
    }

    #[test]
    fn unique_bytes_follow_translation_and_broadcast() {
        let grid = [64, 1, 1];
        let p = plan(grid);
        let blocks: Vec<[u32; 3]> = p.iter().map(|(b, _)| *b).collect();
        let fps = synthetic(64, &blocks);
        let ptrs = [1000 << 5, 5000 << 5, 9000 << 5];
        let (read, written) = estimate_unique(grid, &p, &fps, &ptrs);
        // Operand 0: sectors 0 .. 8·63 + 12; operand 1: 4 sectors; written: 64 · 8.
        assert_eq!(read, 32.0 * ((8 * 63 + 12) + 4) as f64);
        assert_eq!(written, 32.0 * 512.0);
        let all: Vec<[u32; 3]> = (0..64).map(|x| [x, 0, 0]).collect();
        assert_eq!(exact_unique(&synthetic(64, &all)), (read, written));
    }
}
