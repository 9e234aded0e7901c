//! The channel widths of a UNet16: the paper's model, a width-scaled variant, or
//! whatever a weight file's shapes say.

use std::collections::BTreeMap;

use crate::error::Result;

/// Channel widths of every layer. The topology is fixed; only widths vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UNetConfig {
    /// Widths of the VGG16 blocks conv1..conv5 (64, 128, 256, 512, 512).
    pub enc: [usize; 5],
    /// Width of the 3x3 conv in center, dec5, dec4, dec3, dec2 (512, 512, 512, 256, 128).
    pub dec_mid: [usize; 5],
    /// Output width of the deconv in center, dec5, dec4, dec3, dec2 (256, 256, 256, 64, 32).
    pub dec_out: [usize; 5],
    /// Width of dec1 (32).
    pub dec1: usize,
    /// Attributes, K (5).
    pub classes: usize,
}

impl UNetConfig {
    /// The paper's model: VGG16 encoder, `nf` = 32, K = 5 (32.2 M parameters).
    pub fn paper() -> Self {
        Self::scaled(1.0).expect("width 1 is valid")
    }

    /// Every channel count of the paper's model times `factor` (rounded, at least 1).
    pub fn scaled(factor: f64) -> Result<Self> {
        crate::limits::WIDTH.check(factor)?;
        let s = |c: usize| ((c as f64 * factor).round() as usize).max(1);
        let nf = 32;
        Ok(UNetConfig {
            enc: [64, 128, 256, 512, 512].map(s),
            dec_mid: [nf * 16, nf * 16, nf * 16, nf * 8, nf * 4].map(s),
            dec_out: [nf * 8, nf * 8, nf * 8, nf * 2, nf].map(s),
            dec1: s(nf),
            classes: crate::attributes::NUM_ATTRIBUTES,
        })
    }

    /// (input, output) channels of the 13 encoder convs.
    pub fn encoder_convs(&self) -> [(usize, usize); 13] {
        let e = self.enc;
        [
            (3, e[0]),
            (e[0], e[0]),
            (e[0], e[1]),
            (e[1], e[1]),
            (e[1], e[2]),
            (e[2], e[2]),
            (e[2], e[2]),
            (e[2], e[3]),
            (e[3], e[3]),
            (e[3], e[3]),
            (e[3], e[4]),
            (e[4], e[4]),
            (e[4], e[4]),
        ]
    }

    /// Input channels of decoder block `i` (0 = center, 1 = dec5 … 4 = dec2): the
    /// previous block's output concatenated with the matching encoder block.
    pub fn decoder_in(&self, i: usize) -> usize {
        if i == 0 {
            self.enc[4]
        } else {
            self.dec_out[i - 1] + self.enc[5 - i]
        }
    }

    /// Input channels of dec1: dec2's output and conv1.
    pub fn dec1_in(&self) -> usize {
        self.dec_out[4] + self.enc[0]
    }

    /// The widths a set of PyTorch-layout shapes implies (canonical names), checked
    /// for consistency; each error names the tensor.
    pub fn from_shapes(shapes: &BTreeMap<String, Vec<usize>>) -> std::result::Result<Self, (String, String)> {
        let get = |name: &str| -> std::result::Result<&Vec<usize>, (String, String)> {
            shapes.get(name).ok_or_else(|| (name.to_string(), "missing".to_string()))
        };
        let out_ch = |name: &str, dim: usize| -> std::result::Result<usize, (String, String)> {
            let s = get(name)?;
            s.get(dim).copied().ok_or_else(|| (name.to_string(), format!("unexpected shape {s:?}")))
        };
        let enc_idx = [2, 7, 14, 21, 28];
        let mut enc = [0; 5];
        for (e, i) in enc.iter_mut().zip(enc_idx) {
            *e = out_ch(&format!("encoder.{i}.weight"), 0)?;
        }
        let mut dec_mid = [0; 5];
        let mut dec_out = [0; 5];
        for (i, block) in super::params::DECODER_BLOCKS.iter().enumerate() {
            dec_mid[i] = out_ch(&format!("{block}.block.0.conv.weight"), 0)?;
            dec_out[i] = out_ch(&format!("{block}.block.1.weight"), 1)?;
        }
        let dec1 = out_ch("dec1.conv.weight", 0)?;
        let classes = out_ch("final.weight", 0)?;
        Ok(UNetConfig { enc, dec_mid, dec_out, dec1, classes })
    }
}
