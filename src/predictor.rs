//! The embeddable predictor: load the weights once, choose the device and the
//! precision, then turn RGB images of any size into the five attribute probability
//! maps or 0/255 masks at the image's own size, exactly as `lesionseg predict` does
//! (the same resize, normalisation, network, sigmoid, bilinear resize back and
//! threshold, through the same functions, so the same bits).
//!
//! ```no_run
//! use lesionseg::predictor::{Predictor, PredictorOptions};
//!
//! let mut p = Predictor::load("best_jaccard.safetensors", &PredictorOptions::default())?;
//! let (width, height) = (640, 480);
//! let rgb = vec![128u8; 3 * width * height]; // row-major RGB, 3 bytes a pixel
//! let masks = p.masks(&rgb, width, height, 0.3)?;
//! for (name, mask) in lesionseg::predictor::ATTRIBUTES.iter().zip(&masks.maps) {
//!     println!("{name}: {} of {} pixels", mask.iter().filter(|&&v| v == 255).count(), mask.len());
//! }
//! # Ok::<(), lesionseg::Error>(())
//! ```
//!
//! Memory: the model holds no gradient buffers and the activations live in the
//! inference arena (`Plan::inference`), kept between calls and remade only when
//! the batch shape changes. The C interface over this is `capi.rs`
//! (`include/lesionseg.h`).

use std::path::Path;

use crate::backend::cpu::Cpu;
use crate::backend::cuda::driver::Cuda;
use crate::backend::cuda::{Kernels, Precision};
use crate::backend::emu::Emu;
use crate::backend::Backend;
use crate::device::{self, Device, Opened};
use crate::error::{Error, Result};
use crate::metrics::K;
use crate::model::{UNet16, Workspace};
use crate::predict;

pub use crate::metrics::ATTRIBUTES;

/// How to load a [`Predictor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PredictorOptions {
    /// Where to run: a usable GPU or the CPU (`Auto`), or as named.
    pub device: Device,
    /// The convolutions' arithmetic on the GPU (`Bf16`: tensor cores, sm_80+).
    pub precision: Precision,
    /// The network's input side; `None`: the checkpoint's training size, else 512.
    pub size: Option<usize>,
}

impl Default for PredictorOptions {
    /// `Auto`, f32, the checkpoint's size.
    fn default() -> Self {
        PredictorOptions { device: Device::Auto, precision: Precision::F32, size: None }
    }
}

/// The five probability maps of one image at its own size: `maps[k]` is attribute
/// `ATTRIBUTES[k]`, row-major, `width`×`height` values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Probabilities {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// One map per attribute.
    pub maps: [Vec<f32>; K],
}

/// The five masks of one image at its own size: 255 where the probability is above
/// the threshold, else 0; `maps[k]` is attribute `ATTRIBUTES[k]`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masks {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// One mask per attribute.
    pub maps: [Vec<u8>; K],
}

/// A model on a backend, with its inference arena.
struct Session<B: Backend> {
    be: B,
    model: UNet16<B>,
    ws: Option<Workspace<B>>,
}

impl<B: Backend> Session<B> {
    /// The `[1,K,size,size]` probabilities of one `size`×`size` RGB image.
    fn run(&mut self, rgb: Vec<u8>, size: usize) -> Result<Vec<f32>> {
        if self.ws.is_none() {
            self.ws = Some(self.model.inference_workspace(&self.be, 1, size, size)?);
        }
        let ws = self.ws.as_ref().expect("made above");
        predict::probabilities(&self.be, &self.model, ws, &[rgb])
    }

    fn describe(&self) -> String {
        self.be.describe()
    }
}

/// The session on whichever backend was opened (boxed: a session holds its plan).
enum Inner {
    Cpu(Box<Session<Cpu>>),
    Cuda(Box<Session<Kernels<Cuda>>>),
    Emu(Box<Session<Kernels<Emu>>>),
}

/// Weights loaded once on a device, ready to predict image after image.
pub struct Predictor {
    inner: Inner,
    size: usize,
    note: Option<String>,
}

impl Predictor {
    /// Loads `weights` (a weight file or a training checkpoint, safetensors) on the
    /// device of `options`.
    pub fn load(weights: impl AsRef<Path>, options: &PredictorOptions) -> Result<Self> {
        let weights = weights.as_ref();
        let ck = crate::train::checkpoint::load(weights)?;
        let size = predict::input_size(weights, options.size, &ck.metadata)?.0;
        let (mut opened, note) = device::open(options.device)?;
        opened.set_precision(options.precision)?;
        let inner = match opened {
            Opened::Cpu(be) => Inner::Cpu(session(be, &ck)?),
            Opened::Cuda(be) => Inner::Cuda(session(be, &ck)?),
            Opened::Emu(be) => Inner::Emu(session(be, &ck)?),
        };
        Ok(Predictor { inner, size, note })
    }

    /// The network's input side (images are resized to it and back).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The backend and its hardware (`cpu`, `cuda: NVIDIA L4`).
    pub fn device(&self) -> String {
        match &self.inner {
            Inner::Cpu(s) => s.describe(),
            Inner::Cuda(s) => s.describe(),
            Inner::Emu(s) => s.describe(),
        }
    }

    /// What `Device::Auto` chose and why, when it was asked to choose.
    pub fn device_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The five probability maps of an RGB image (`3·width·height` bytes, row-major)
    /// at its own size.
    pub fn probabilities(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<Probabilities> {
        let (probs, size) = self.network(rgb, width, height)?;
        let maps = std::array::from_fn(|k| {
            predict::resize_bilinear(&probs[k * size * size..(k + 1) * size * size], size, size, width, height)
        });
        Ok(Probabilities { width, height, maps })
    }

    /// The five masks (0/255) of an RGB image at its own size: probability above
    /// `threshold` (the paper's 0.3) is 255.
    pub fn masks(&mut self, rgb: &[u8], width: usize, height: usize, threshold: f64) -> Result<Masks> {
        if !(threshold > 0.0 && threshold < 1.0) {
            return Err(Error::Argument { arg: "threshold".into(), reason: format!("{threshold} is outside (0, 1)") });
        }
        let (probs, size) = self.network(rgb, width, height)?;
        let maps = std::array::from_fn(|k| {
            predict::mask_at_size(&probs[k * size * size..(k + 1) * size * size], size, width, height, threshold)
        });
        Ok(Masks { width, height, maps })
    }

    /// The network's `[K,size,size]` probabilities for one image, and `size`.
    fn network(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<(Vec<f32>, usize)> {
        let expected = width.checked_mul(height).and_then(|p| p.checked_mul(3));
        if width == 0 || height == 0 || expected != Some(rgb.len()) {
            return Err(Error::shape(
                "predictor image",
                format!("3·width·height = {} bytes of RGB for {width}x{height}", expected.unwrap_or(0)),
                format!("{} bytes", rgb.len()),
            ));
        }
        let (w, h) = (u32::try_from(width), u32::try_from(height));
        let (Ok(w), Ok(h)) = (w, h) else { return Err(Error::shape("predictor image", "sides below 2^32", width)) };
        let image = image::RgbImage::from_raw(w, h, rgb.to_vec())
            .ok_or_else(|| Error::shape("predictor image", "a whole RGB image", rgb.len()))?;
        let size = self.size;
        let resized = crate::data::isic::resize_rgb8(image, size);
        let probs = match &mut self.inner {
            Inner::Cpu(s) => s.run(resized, size)?,
            Inner::Cuda(s) => s.run(resized, size)?,
            Inner::Emu(s) => s.run(resized, size)?,
        };
        Ok((probs, size))
    }
}

fn session<B: Backend>(be: B, ck: &crate::train::checkpoint::Checkpoint) -> Result<Box<Session<B>>> {
    let model = UNet16::for_inference(&be, ck.cfg, &ck.params)?;
    Ok(Box::new(Session { be, model, ws: None }))
}
