//! The C interface of the predictor (`include/lesionseg.h`; built as the `cdylib`
//! `liblesionseg.so` next to the Rust library): an opaque handle, status codes and
//! a per-thread last-error message. No panic crosses the boundary: every entry
//! point runs under `catch_unwind` and reports a panic as `LESIONSEG_ERROR_INTERNAL`.
//! Pointers are checked for null; lengths are the caller's promise, as in C.
//!
//! The header is the contract; keep the two in step (`tests/capi.rs` compiles the C
//! example against the header and links it against this library).

use std::cell::RefCell;
use std::ffi::{c_char, c_double, c_float, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::cuda::Precision;
use crate::device::Device;
use crate::error::Error;
use crate::predictor::{Predictor, PredictorOptions, ATTRIBUTES};

/// Success.
pub const LESIONSEG_OK: c_int = 0;
/// A null pointer, an unknown device or precision, a bad threshold or size.
pub const LESIONSEG_ERROR_ARGUMENT: c_int = 1;
/// The weight file cannot be read or does not fit the model.
pub const LESIONSEG_ERROR_WEIGHTS: c_int = 2;
/// The device cannot be opened or failed (no usable GPU for `CUDA`, a kernel error).
pub const LESIONSEG_ERROR_DEVICE: c_int = 3;
/// The image does not fit (size, byte count).
pub const LESIONSEG_ERROR_IMAGE: c_int = 4;
/// A bug inside the library (a panic, caught at the boundary).
pub const LESIONSEG_ERROR_INTERNAL: c_int = 5;

/// The predictor behind the C handle.
pub struct LesionsegPredictor {
    inner: Predictor,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The status code of an error, its message kept as the last error.
fn fail(e: &Error) -> c_int {
    set_last_error(&e.to_string());
    match e {
        Error::Weights { .. } | Error::Io { .. } => LESIONSEG_ERROR_WEIGHTS,
        Error::Cuda(_) | Error::Nvrtc { .. } => LESIONSEG_ERROR_DEVICE,
        Error::Shape { .. } | Error::Data { .. } => LESIONSEG_ERROR_IMAGE,
        _ => LESIONSEG_ERROR_ARGUMENT,
    }
}

/// Runs `f`, turning an error into its code and a panic into
/// `LESIONSEG_ERROR_INTERNAL`, with the message kept as the last error.
fn guarded(f: impl FnOnce() -> Result<(), c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            LESIONSEG_OK
        }
        Ok(Err(code)) => code,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (please report): {what}"));
            LESIONSEG_ERROR_INTERNAL
        }
    }
}

fn argument(msg: &str) -> c_int {
    set_last_error(msg);
    LESIONSEG_ERROR_ARGUMENT
}

/// Opens a predictor; see `include/lesionseg.h`.
///
/// # Safety
/// `weights_path` is a NUL-terminated string; `out` points to writable storage for
/// one pointer.
#[no_mangle]
pub unsafe extern "C" fn lesionseg_predictor_open(
    weights_path: *const c_char,
    device: c_int,
    precision: c_int,
    size: u32,
    out: *mut *mut LesionsegPredictor,
) -> c_int {
    guarded(|| {
        if weights_path.is_null() || out.is_null() {
            return Err(argument("lesionseg_predictor_open: weights_path and out must not be NULL"));
        }
        // SAFETY: non-null (checked) and NUL-terminated (the caller's contract).
        let path = unsafe { CStr::from_ptr(weights_path) }.to_string_lossy().into_owned();
        let device = match device {
            0 => Device::Auto,
            1 => Device::Cpu,
            2 => Device::Cuda,
            3 => Device::Emu,
            d => return Err(argument(&format!("unknown device {d} (LESIONSEG_DEVICE_AUTO, _CPU, _CUDA or _EMU)"))),
        };
        let precision = match precision {
            0 => Precision::F32,
            1 => Precision::Bf16,
            p => return Err(argument(&format!("unknown precision {p} (LESIONSEG_PRECISION_F32 or _BF16)"))),
        };
        let options = PredictorOptions { device, precision, size: (size > 0).then_some(size as usize) };
        let inner = Predictor::load(&path, &options).map_err(|e| fail(&e))?;
        // SAFETY: `out` is non-null (checked) and writable (the caller's contract).
        unsafe { *out = Box::into_raw(Box::new(LesionsegPredictor { inner })) };
        Ok(())
    })
}

/// Frees a predictor (NULL is ignored).
///
/// # Safety
/// `p` is NULL or a handle from `lesionseg_predictor_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn lesionseg_predictor_free(p: *mut LesionsegPredictor) {
    if !p.is_null() {
        // A panic in a destructor must not unwind into C either.
        // SAFETY: a handle from `Box::into_raw`, freed once (the caller's contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(p) })));
    }
}

/// The network's input side (the checkpoint's training size unless opened with one).
///
/// # Safety
/// `p` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn lesionseg_predictor_size(p: *const LesionsegPredictor) -> u32 {
    // SAFETY: a live handle or NULL (the caller's contract).
    unsafe { p.as_ref() }.map_or(0, |p| p.inner.size() as u32)
}

/// The checks shared by the two prediction calls; the handle and the image.
///
/// # Safety
/// As for `lesionseg_predict_masks`.
unsafe fn image<'a>(
    p: *mut LesionsegPredictor,
    rgb: *const u8,
    width: u32,
    height: u32,
    out_null: bool,
) -> Result<(&'a mut Predictor, &'a [u8], usize, usize), c_int> {
    if p.is_null() || rgb.is_null() || out_null {
        return Err(argument("the predictor, rgb and the output must not be NULL"));
    }
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return Err(argument(&format!("image {width}x{height}: both sides must be positive")));
    }
    let len = w.checked_mul(h).and_then(|n| n.checked_mul(3)).ok_or_else(|| argument("image too large"))?;
    // SAFETY: a live handle (the caller's contract), not aliased during the call.
    let predictor = unsafe { &mut (*p).inner };
    // SAFETY: `rgb` points to 3·width·height readable bytes (the caller's contract).
    let rgb = unsafe { std::slice::from_raw_parts(rgb, len) };
    Ok((predictor, rgb, w, h))
}

/// The five 0/255 masks of an RGB image at its own size; see the header.
///
/// # Safety
/// `p` is a live handle; `rgb` holds `3·width·height` bytes; `masks` has room for
/// `5·width·height` bytes.
#[no_mangle]
pub unsafe extern "C" fn lesionseg_predict_masks(
    p: *mut LesionsegPredictor,
    rgb: *const u8,
    width: u32,
    height: u32,
    threshold: c_double,
    masks: *mut u8,
) -> c_int {
    guarded(|| {
        // SAFETY: forwarded contract.
        let (predictor, rgb, w, h) = unsafe { image(p, rgb, width, height, masks.is_null())? };
        let m = predictor.masks(rgb, w, h, threshold).map_err(|e| fail(&e))?;
        // SAFETY: `masks` has room for 5·w·h bytes (the caller's contract).
        let out = unsafe { std::slice::from_raw_parts_mut(masks, 5 * w * h) };
        for (dst, src) in out.chunks_exact_mut(w * h).zip(&m.maps) {
            dst.copy_from_slice(src);
        }
        Ok(())
    })
}

/// The five probability maps of an RGB image at its own size; see the header.
///
/// # Safety
/// `p` is a live handle; `rgb` holds `3·width·height` bytes; `probs` has room for
/// `5·width·height` floats.
#[no_mangle]
pub unsafe extern "C" fn lesionseg_predict_probabilities(
    p: *mut LesionsegPredictor,
    rgb: *const u8,
    width: u32,
    height: u32,
    probs: *mut c_float,
) -> c_int {
    guarded(|| {
        // SAFETY: forwarded contract.
        let (predictor, rgb, w, h) = unsafe { image(p, rgb, width, height, probs.is_null())? };
        let m = predictor.probabilities(rgb, w, h).map_err(|e| fail(&e))?;
        // SAFETY: `probs` has room for 5·w·h floats (the caller's contract).
        let out = unsafe { std::slice::from_raw_parts_mut(probs, 5 * w * h) };
        for (dst, src) in out.chunks_exact_mut(w * h).zip(&m.maps) {
            dst.copy_from_slice(src);
        }
        Ok(())
    })
}

/// The last error on this thread ("" after a success); valid until the next call
/// on this thread.
#[no_mangle]
pub extern "C" fn lesionseg_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The name of attribute `k` (0..4), as in the output file names; NULL otherwise.
#[no_mangle]
pub extern "C" fn lesionseg_attribute_name(k: c_int) -> *const c_char {
    const NAMES: [&CStr; 5] = [c"pigment_network", c"negative_network", c"streaks", c"milia_like_cyst", c"globules"];
    debug_assert!(NAMES.iter().zip(ATTRIBUTES).all(|(c, a)| c.to_str() == Ok(a)));
    usize::try_from(k).ok().and_then(|k| NAMES.get(k)).map_or(std::ptr::null(), |c| c.as_ptr())
}

/// The library version, `"0.1.0"`.
#[no_mangle]
pub extern "C" fn lesionseg_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_attributes() {
        for (k, a) in ATTRIBUTES.iter().enumerate() {
            // SAFETY: a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(lesionseg_attribute_name(k as c_int)) };
            assert_eq!(name.to_str().unwrap(), *a);
        }
        assert!(lesionseg_attribute_name(5).is_null() && lesionseg_attribute_name(-1).is_null());
    }

    #[test]
    fn errors_are_codes_and_messages() {
        let mut out = std::ptr::null_mut();
        // SAFETY: valid pointers; the path does not exist.
        let rc = unsafe { lesionseg_predictor_open(c"/no/such/file.safetensors".as_ptr(), 1, 0, 0, &mut out) };
        assert_eq!(rc, LESIONSEG_ERROR_WEIGHTS);
        assert!(out.is_null());
        // SAFETY: the message is NUL-terminated and valid until the next call.
        let msg = unsafe { CStr::from_ptr(lesionseg_last_error()) }.to_string_lossy().into_owned();
        assert!(msg.contains("/no/such/file.safetensors"), "{msg}");
        // SAFETY: NULL arguments are checked.
        let rc = unsafe { lesionseg_predictor_open(std::ptr::null(), 1, 0, 0, &mut out) };
        assert_eq!(rc, LESIONSEG_ERROR_ARGUMENT);
        // SAFETY: as above.
        let rc = unsafe { lesionseg_predictor_open(c"x".as_ptr(), 9, 0, 0, &mut out) };
        assert_eq!(rc, LESIONSEG_ERROR_ARGUMENT);
        // SAFETY: a NULL handle is checked.
        let rc = unsafe {
            lesionseg_predict_masks(std::ptr::null_mut(), [0u8; 3].as_ptr(), 1, 1, 0.3, [0u8; 5].as_mut_ptr())
        };
        assert_eq!(rc, LESIONSEG_ERROR_ARGUMENT);
        // SAFETY: NULL is ignored.
        unsafe { lesionseg_predictor_free(std::ptr::null_mut()) };
    }
}
