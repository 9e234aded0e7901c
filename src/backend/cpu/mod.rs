//! The CPU backend: the reference every kernel is checked against, and the
//! fallback on machines without a GPU.
//!
//! The op modules work on plain slices and are generic over [`Real`] (f32 for the
//! engine, f64 for the finite-difference gradient checks). This file maps the
//! [`Backend`] trait onto them: it checks every operand against its buffer and
//! checks that no output overlaps another operand before it hands out slices.

pub mod adam;
pub mod conv2d;
pub mod deconv;
mod im2col;
pub mod layout;
pub mod loss;
pub mod pool;

use std::cell::UnsafeCell;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};
use std::time::Instant;

use super::{
    view_len, AdamParams, At, Backend, Conv2dParams, DeconvParams, GlobalPoolParams, GradIn, LossParams, LossSums,
    MaskCoefs, MaxPoolParams,
};
use crate::error::{Error, Result};

/// The float types the CPU ops are written for: f32 (the engine) and f64 (gradient checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    /// Converts from f64 (rounding for f32).
    fn from_f64(v: f64) -> Self;
    /// Widens to f64.
    fn to_f64(self) -> f64;
    /// e^self.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// True for NaN.
    fn is_nan(self) -> bool;
    /// 0.
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    /// 1.
    fn one() -> Self {
        Self::from_f64(1.0)
    }
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// A host buffer. Operations take `&CpuBuf` for inputs and outputs alike (as device
/// pointers would be); the backend checks, before each op, that what it writes does
/// not overlap anything else it touches, which makes handing out slices sound.
pub struct CpuBuf {
    data: UnsafeCell<Vec<f32>>,
}

impl CpuBuf {
    fn len(&self) -> usize {
        // SAFETY: the length never changes after allocation and no `&mut Vec` escapes.
        unsafe { (*self.data.get()).len() }
    }
    fn ptr(&self) -> *mut f32 {
        // SAFETY: as above; the pointer is only dereferenced through checked regions.
        unsafe { (*self.data.get()).as_mut_ptr() }
    }
}

/// One operand of an op: where it is, how long, whether the op writes it.
struct Region<'a> {
    name: &'static str,
    buf: &'a CpuBuf,
    off: usize,
    len: usize,
    write: bool,
}

fn region<'a>(name: &'static str, at: At<'a, Cpu>, len: usize, write: bool) -> Region<'a> {
    Region { name, buf: at.buf, off: at.off, len, write }
}

/// Checks bounds and that every written region is disjoint from every other region
/// of the same buffer.
fn check(op: &str, regions: &[Region]) -> Result<()> {
    for r in regions {
        if r.off.checked_add(r.len).is_none_or(|end| end > r.buf.len()) {
            return Err(Error::shape(
                format!("{op} operand {}", r.name),
                format!("{} elements at offset {} inside a buffer of {}", r.len, r.off, r.buf.len()),
                "an operand past the end of its buffer",
            ));
        }
    }
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            let same = std::ptr::eq(a.buf, b.buf);
            let overlap = a.off < b.off + b.len && b.off < a.off + a.len && a.len > 0 && b.len > 0;
            if same && overlap && (a.write || b.write) {
                return Err(Error::shape(
                    op,
                    format!("operands {} and {} in disjoint memory", a.name, b.name),
                    "overlapping operands",
                ));
            }
        }
    }
    Ok(())
}

/// # Safety
/// `r` must have passed [`check`] together with every region used at the same time.
unsafe fn read<'a>(r: &Region<'a>) -> &'a [f32] {
    std::slice::from_raw_parts(r.buf.ptr().add(r.off), r.len)
}

/// # Safety
/// As [`read`], and `r.write` must be true.
#[allow(clippy::mut_from_ref)]
unsafe fn write<'a>(r: &Region<'a>) -> &'a mut [f32] {
    debug_assert!(r.write);
    std::slice::from_raw_parts_mut(r.buf.ptr().add(r.off), r.len)
}

/// The CPU backend (rayon threads, `gemm` for the matrix products).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

fn act_len(pixels: usize, c: usize, pitch: usize, op: &str) -> Result<usize> {
    if pitch < c {
        return Err(Error::shape(op, format!("pixel pitch >= {c} channels"), format!("pitch {pitch}")));
    }
    Ok(view_len(pixels, c, pitch))
}

impl Backend for Cpu {
    type Buf = CpuBuf;
    type Mark = Instant;

    fn mark(&self) -> Result<Instant> {
        Ok(Instant::now())
    }

    fn elapsed_ms(&self, start: &Instant, end: &Instant) -> Result<f64> {
        Ok(end.saturating_duration_since(*start).as_secs_f64() * 1e3)
    }

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, len: usize) -> Result<CpuBuf> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| Error::Resources(format!("cannot allocate {} MiB of host memory", (len * 4) >> 20)))?;
        v.resize(len, 0.0);
        Ok(CpuBuf { data: UnsafeCell::new(v) })
    }

    fn upload(&self, dst: &CpuBuf, off: usize, src: &[f32]) -> Result<()> {
        let r = Region { name: "dst", buf: dst, off, len: src.len(), write: true };
        check("upload", std::slice::from_ref(&r))?;
        // SAFETY: checked above; `src` is a Rust slice, so it cannot alias a region
        // handed out mutably (none is alive outside an op).
        unsafe { write(&r) }.copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &CpuBuf, off: usize, dst: &mut [f32]) -> Result<()> {
        let r = Region { name: "src", buf: src, off, len: dst.len(), write: false };
        check("download", std::slice::from_ref(&r))?;
        // SAFETY: checked above.
        dst.copy_from_slice(unsafe { read(&r) });
        Ok(())
    }

    fn zero(&self, buf: &CpuBuf, off: usize, len: usize) -> Result<()> {
        let r = Region { name: "buf", buf, off, len, write: true };
        check("zero", std::slice::from_ref(&r))?;
        // SAFETY: checked above.
        unsafe { write(&r) }.fill(0.0);
        Ok(())
    }

    fn conv2d_forward(&self, y: At<Self>, x: At<Self>, w: At<Self>, b: At<Self>, p: &Conv2dParams) -> Result<()> {
        let op = "conv2d_forward";
        if p.r != 1 && p.r != 3 {
            return Err(Error::shape(op, "filter size 1 or 3", p.r));
        }
        let pix = p.n * p.h * p.w;
        let rs = [
            region("y", y, act_len(pix, p.k, p.y_pitch, op)?, true),
            region("x", x, act_len(pix, p.c, p.x_pitch, op)?, false),
            region("w", w, p.weight_len(), false),
            region("b", b, p.k, false),
        ];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { conv2d::conv2d_forward(write(&rs[0]), read(&rs[1]), read(&rs[2]), read(&rs[3]), p) };
        Ok(())
    }

    fn conv2d_backward(
        &self,
        dx: GradIn<Self>,
        dw: At<Self>,
        db: At<Self>,
        dy: At<Self>,
        y: At<Self>,
        x: At<Self>,
        w: At<Self>,
        p: &Conv2dParams,
    ) -> Result<()> {
        let op = "conv2d_backward";
        if p.r != 1 && p.r != 3 {
            return Err(Error::shape(op, "filter size 1 or 3", p.r));
        }
        let pix = p.n * p.h * p.w;
        let (xl, yl) = (act_len(pix, p.c, p.x_pitch, op)?, act_len(pix, p.k, p.y_pitch, op)?);
        let mut rs = vec![
            region("dw", dw, p.weight_len(), true),
            region("db", db, p.k, true),
            region("dy", dy, yl, true),
            region("y", y, yl, false),
            region("x", x, xl, false),
            region("w", w, p.weight_len(), false),
        ];
        let add = grad_in_region(&dx, xl, &mut rs);
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe {
            let dx = rs.get(6).map(|r| write(r));
            conv2d::conv2d_backward(
                dx,
                add,
                write(&rs[0]),
                write(&rs[1]),
                write(&rs[2]),
                read(&rs[3]),
                read(&rs[4]),
                read(&rs[5]),
                p,
            )
        };
        Ok(())
    }

    fn deconv_forward(&self, y: At<Self>, x: At<Self>, w: At<Self>, b: At<Self>, p: &DeconvParams) -> Result<()> {
        let op = "deconv_forward";
        let rs = [
            region("y", y, act_len(p.n * p.out_h() * p.out_w(), p.k, p.y_pitch, op)?, true),
            region("x", x, act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?, false),
            region("w", w, p.weight_len(), false),
            region("b", b, p.k, false),
        ];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { deconv::deconv_forward(write(&rs[0]), read(&rs[1]), read(&rs[2]), read(&rs[3]), p) };
        Ok(())
    }

    fn deconv_backward(
        &self,
        dx: GradIn<Self>,
        dw: At<Self>,
        db: At<Self>,
        dy: At<Self>,
        y: At<Self>,
        x: At<Self>,
        w: At<Self>,
        p: &DeconvParams,
    ) -> Result<()> {
        let op = "deconv_backward";
        let xl = act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?;
        let yl = act_len(p.n * p.out_h() * p.out_w(), p.k, p.y_pitch, op)?;
        let mut rs = vec![
            region("dw", dw, p.weight_len(), true),
            region("db", db, p.k, true),
            region("dy", dy, yl, true),
            region("y", y, yl, false),
            region("x", x, xl, false),
            region("w", w, p.weight_len(), false),
        ];
        let add = grad_in_region(&dx, xl, &mut rs);
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe {
            let dx = rs.get(6).map(|r| write(r));
            deconv::deconv_backward(
                dx,
                add,
                write(&rs[0]),
                write(&rs[1]),
                write(&rs[2]),
                read(&rs[3]),
                read(&rs[4]),
                read(&rs[5]),
                p,
            )
        };
        Ok(())
    }

    fn maxpool_forward(&self, y: At<Self>, x: At<Self>, p: &MaxPoolParams) -> Result<()> {
        let op = "maxpool_forward";
        even_hw(op, p.h, p.w)?;
        let rs = [
            region("y", y, act_len(p.n * p.out_h() * p.out_w(), p.c, p.y_pitch, op)?, true),
            region("x", x, act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?, false),
        ];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { pool::maxpool_forward(write(&rs[0]), read(&rs[1]), p) };
        Ok(())
    }

    fn maxpool_backward(&self, dx: At<Self>, dy: At<Self>, x: At<Self>, p: &MaxPoolParams) -> Result<()> {
        let op = "maxpool_backward";
        even_hw(op, p.h, p.w)?;
        let xl = act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?;
        let rs = [
            region("dx", dx, xl, true),
            region("dy", dy, act_len(p.n * p.out_h() * p.out_w(), p.c, p.y_pitch, op)?, false),
            region("x", x, xl, false),
        ];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { pool::maxpool_backward(write(&rs[0]), read(&rs[1]), read(&rs[2]), p) };
        Ok(())
    }

    fn global_avg_forward(&self, y: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        let op = "global_avg_forward";
        let rs =
            [region("y", y, p.n * p.c, true), region("x", x, act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?, false)];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { pool::global_avg_forward(write(&rs[0]), read(&rs[1]), p) };
        Ok(())
    }

    fn global_avg_backward(&self, dx: At<Self>, dy: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        let op = "global_avg_backward";
        let rs =
            [region("dx", dx, act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?, true), region("dy", dy, p.n * p.c, false)];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { pool::global_avg_backward(write(&rs[0]), read(&rs[1]), p) };
        Ok(())
    }

    fn global_max_forward(&self, y: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        let op = "global_max_forward";
        let rs =
            [region("y", y, p.n * p.c, true), region("x", x, act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?, false)];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { pool::global_max_forward(write(&rs[0]), read(&rs[1]), p) };
        Ok(())
    }

    fn global_max_backward(&self, dx: At<Self>, dy: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        let op = "global_max_backward";
        let xl = act_len(p.n * p.h * p.w, p.c, p.x_pitch, op)?;
        let rs = [region("dx", dx, xl, true), region("dy", dy, p.n * p.c, false), region("x", x, xl, false)];
        check(op, &rs)?;
        // SAFETY: all regions checked together.
        unsafe { pool::global_max_backward(write(&rs[0]), read(&rs[1]), read(&rs[2]), p) };
        Ok(())
    }

    fn loss_sums(
        &self,
        d_mask: At<Self>,
        d_mid: At<Self>,
        d_last: At<Self>,
        mask_logits: At<Self>,
        cls_mid: At<Self>,
        cls_last: At<Self>,
        target: At<Self>,
        p: &LossParams,
        total_n: usize,
    ) -> Result<LossSums> {
        let masks = p.n * p.h * p.w * p.k;
        let heads = p.n * p.k;
        let rs = [
            region("d_mask", d_mask, masks, true),
            region("d_mid", d_mid, heads, true),
            region("d_last", d_last, heads, true),
            region("mask_logits", mask_logits, masks, false),
            region("cls_mid", cls_mid, heads, false),
            region("cls_last", cls_last, heads, false),
            region("target", target, masks, false),
        ];
        check("loss", &rs)?;
        let [dm, di, dl, xm, xi, xl, tg] = &rs;
        // SAFETY: all regions checked together.
        Ok(unsafe {
            loss::loss_sums(write(dm), write(di), write(dl), read(xm), read(xi), read(xl), read(tg), p, total_n)
        })
    }

    fn loss_mask_grad(
        &self,
        d_mask: At<Self>,
        _: At<Self>,
        target: At<Self>,
        p: &LossParams,
        c: &MaskCoefs,
    ) -> Result<()> {
        let masks = p.n * p.h * p.w * p.k;
        let rs = [region("d_mask", d_mask, masks, true), region("target", target, masks, false)];
        check("loss", &rs)?;
        // SAFETY: all regions checked together.
        unsafe { loss::loss_mask_grad(write(&rs[0]), read(&rs[1]), p, c) };
        Ok(())
    }

    fn adam(&self, param: At<Self>, m: At<Self>, v: At<Self>, grad: At<Self>, p: &AdamParams) -> Result<()> {
        let rs = [
            region("param", param, p.len, true),
            region("m", m, p.len, true),
            region("v", v, p.len, true),
            region("grad", grad, p.len, false),
        ];
        check("adam", &rs)?;
        // SAFETY: all regions checked together.
        unsafe { adam::adam(write(&rs[0]), write(&rs[1]), write(&rs[2]), read(&rs[3]), p) };
        Ok(())
    }
}

/// Appends the input-gradient region (index 6) if there is one; returns whether it adds.
fn grad_in_region<'a>(dx: &GradIn<'a, Cpu>, len: usize, rs: &mut Vec<Region<'a>>) -> bool {
    match dx {
        GradIn::Skip => false,
        GradIn::Write(at) => {
            rs.push(region("dx", *at, len, true));
            false
        }
        GradIn::Add(at) => {
            rs.push(region("dx", *at, len, true));
            true
        }
    }
}

fn even_hw(op: &str, h: usize, w: usize) -> Result<()> {
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        return Err(Error::shape(op, "even H and W", format!("{h}x{w}")));
    }
    Ok(())
}
