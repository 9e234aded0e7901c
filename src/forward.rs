//! The `forward` command: one forward (and, with targets, backward) pass of a
//! weight file on a tensor file, written as tensors, so that users can check the
//! engine against their PyTorch model tensor by tensor.
//!
//! Input file: `input` `[N,3,H,W]` f32 (already normalised), optionally
//! `target_mask` `[N,K,H,W]` f32 in {0,1}. Output file: `mask_logits` `[N,K,H,W]`,
//! `cls_mid_logits` `[N,K]`, `cls_last_logits` `[N,K]`; with targets also `loss`,
//! `loss1`, `loss2`, `loss3` (0-d), `grad.<parameter>` in PyTorch layout for every
//! parameter and `grad.input` `[N,3,H,W]`.
//!
//! The pass runs on whatever backend it is given: with `--precision bf16` on the
//! kernel backends (`cuda`, `emu`) every convolution and deconvolution, forward and
//! backward, takes bf16 products on tensor cores, so the file is the bf16 engine's
//! result, to set beside PyTorch's bf16 autocast (`tests/bf16.rs` does so). The
//! output's metadata names the backend and its precision.

use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{UNet16, View};
use crate::tensor::{dims4, Tensor};
use crate::weights::{self, file::Role, file::TensorFile};

/// What one `forward` run produced, for the caller to report.
#[derive(Clone, Debug)]
pub struct ForwardSummary {
    /// Batch, height, width.
    pub batch: (usize, usize, usize),
    /// Parameter count of the model.
    pub parameters: usize,
    /// Losses when targets were given.
    pub loss: Option<crate::backend::LossParts>,
    /// Seconds spent in the passes (not in file I/O).
    pub seconds: f64,
    /// The backend that ran them, with its precision (`emu (bf16 convolutions)`).
    pub backend: String,
}

/// Loads the model from `weights_path` (any accepted naming and dtype; a training
/// checkpoint's optimizer state is ignored).
pub fn load_model<B: Backend>(be: &B, weights_path: &Path) -> Result<UNet16<B>> {
    let ck = crate::train::checkpoint::load(weights_path)?;
    UNet16::new(be, ck.cfg, &ck.params)
}

/// Runs the `forward` command on backend `be`.
pub fn run<B: Backend>(be: &B, weights_path: &Path, input_path: &Path, output_path: &Path) -> Result<ForwardSummary> {
    crate::output::refuse_inputs("--output", output_path, &[("--input", input_path), ("--weights", weights_path)])?;
    crate::output::remove_stale_temps(crate::output::folder(output_path));
    let model = load_model(be, weights_path)?;
    // Only the two tensors used are read (after a memory check), whatever else the
    // file holds.
    let mut file = TensorFile::open(input_path, Role::Data)?;
    if file.entry("input").is_none() {
        let reason = "no tensor named `input` (expected [N,3,H,W] f32)".into();
        return Err(Error::Data { path: input_path.to_path_buf(), reason });
    }
    file.check_memory(&["input", "target_mask"])?;
    let input = file.read("input")?;
    let target = match file.entry("target_mask") {
        Some(_) => Some(file.read("target_mask")?),
        None => None,
    };
    let [n, c, h, w] = dims4(&input.shape, "input").map_err(|e| data_err(input_path, e))?;
    if c != 3 {
        return Err(data_err(input_path, Error::shape("input", "[N,3,H,W] (RGB)", format!("{:?}", input.shape))));
    }
    let ws = model.workspace(be, n, h, w).map_err(|e| data_err(input_path, e))?;
    let k = model.cfg.classes;
    if let Some(t) = &target {
        if t.shape != [n, k, h, w] {
            return Err(data_err(
                input_path,
                Error::shape("target_mask", format!("{:?}", [n, k, h, w]), format!("{:?}", t.shape)),
            ));
        }
    }
    let p = &ws.plan;
    be.upload(&ws.acts, p.input.off, &input.nchw_to_nhwc()?.data)?;
    if let Some(t) = &target {
        be.upload(&ws.target, 0, &t.nchw_to_nhwc()?.data)?;
    }
    let start = std::time::Instant::now();
    model.forward(be, &ws)?;
    let loss = match target {
        Some(_) => Some(model.backward(be, &ws, true)?),
        None => None,
    };
    let seconds = start.elapsed().as_secs_f64();

    let mut out: Vec<(String, Tensor)> = vec![
        ("mask_logits".into(), download_nchw(be, &ws.acts, p.mask_logits)?),
        ("cls_mid_logits".into(), download_dense(be, &ws.acts, p.cls_mid)?),
        ("cls_last_logits".into(), download_dense(be, &ws.acts, p.cls_last)?),
    ];
    if let Some(l) = &loss {
        for (name, v) in [("loss", l.loss), ("loss1", l.loss1), ("loss2", l.loss2), ("loss3", l.loss3)] {
            out.push((name.into(), Tensor::new(vec![], vec![v as f32])?));
        }
        let mut flat = vec![0.0; model.table.len];
        be.download(&model.grads, 0, &mut flat)?;
        for spec in model.table.specs() {
            out.push((format!("grad.{}", spec.name), weights::unpack(spec, &flat)));
        }
        out.push(("grad.input".into(), download_nchw(be, &ws.dacts, p.input)?));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("producer".to_string(), format!("lesionseg {} forward ({})", env!("CARGO_PKG_VERSION"), be.describe()));
    weights::write_safetensors(output_path, &out, Some(meta))?;
    Ok(ForwardSummary { batch: (n, h, w), parameters: model.table.len, loss, seconds, backend: be.describe() })
}

fn data_err(path: &Path, e: Error) -> Error {
    Error::Data { path: path.to_path_buf(), reason: e.to_string() }
}

/// Downloads a (possibly channel-sliced) NHWC view as a dense NCHW tensor.
pub fn download_nchw<B: Backend>(be: &B, buf: &B::Buf, v: View) -> Result<Tensor> {
    let mut raw = vec![0.0; v.len()];
    be.download(buf, v.off, &mut raw[..crate::backend::view_len(v.n * v.h * v.w, v.c, v.pitch)])?;
    let mut nchw = vec![0.0; v.n * v.c * v.h * v.w];
    for n in 0..v.n {
        for y in 0..v.h {
            for x in 0..v.w {
                let pix = (n * v.h + y) * v.w + x;
                for c in 0..v.c {
                    nchw[((n * v.c + c) * v.h + y) * v.w + x] = raw[pix * v.pitch + c];
                }
            }
        }
    }
    Tensor::new(vec![v.n, v.c, v.h, v.w], nchw)
}

/// Downloads an `[N,K]` head as a dense tensor.
pub fn download_dense<B: Backend>(be: &B, buf: &B::Buf, v: View) -> Result<Tensor> {
    let mut data = vec![0.0; v.n * v.c];
    be.download(buf, v.off, &mut data)?;
    Tensor::new(vec![v.n, v.c], data)
}
