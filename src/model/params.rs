//! The parameter table of UNet16: every parameter's PyTorch name, kind, shape and
//! place in the flat parameter buffer (and, at the same offsets, the gradient and
//! Adam buffers).

use std::fmt;

use super::config::UNetConfig;

/// What a parameter is, and so how it is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Conv weight: PyTorch `[K, C, R, R]`, internal `[R][R][C][K]`.
    Conv {
        /// Filter size.
        r: usize,
        /// Input channels.
        c: usize,
        /// Output channels.
        k: usize,
    },
    /// Transposed-conv weight 4x4: PyTorch `[C, K, 4, 4]`, internal parity-major
    /// `[a][b][ty][tx][C][K]` (see `backend::DeconvParams`).
    Deconv {
        /// Input channels.
        c: usize,
        /// Output channels.
        k: usize,
    },
    /// Bias `[K]`, the same both sides.
    Bias {
        /// Channels.
        k: usize,
    },
}

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch name, e.g. `encoder.0.weight`, `center.block.1.bias`.
    pub name: String,
    /// Layout.
    pub kind: ParamKind,
    /// Element offset in the flat buffers.
    pub off: usize,
}

impl ParamSpec {
    /// Elements.
    pub fn len(&self) -> usize {
        match self.kind {
            ParamKind::Conv { r, c, k } => r * r * c * k,
            ParamKind::Deconv { c, k } => 16 * c * k,
            ParamKind::Bias { k } => k,
        }
    }

    /// Always false: no parameter is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape in PyTorch's layout.
    pub fn pytorch_shape(&self) -> Vec<usize> {
        match self.kind {
            ParamKind::Conv { r, c, k } => vec![k, c, r, r],
            ParamKind::Deconv { c, k } => vec![c, k, 4, 4],
            ParamKind::Bias { k } => vec![k],
        }
    }
}

/// A convolution layer of the network: its weight and bias parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerParams {
    /// The weight.
    pub weight: ParamSpec,
    /// The bias.
    pub bias: ParamSpec,
}

impl LayerParams {
    /// PyTorch's default initialisation bound: weight and bias are drawn from
    /// U(−b, b), b = 1/sqrt(fan_in), fan_in = size(1)·receptive field (for a
    /// transposed conv PyTorch's dim 1 is the *output* channels).
    pub fn init_bound(&self) -> f64 {
        let fan_in = match self.weight.kind {
            ParamKind::Conv { r, c, .. } => c * r * r,
            ParamKind::Deconv { k, .. } => k * 16,
            ParamKind::Bias { k } => k,
        };
        1.0 / (fan_in as f64).sqrt()
    }
}

/// All parameters, in PyTorch `state_dict` order of the paper's model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamTable {
    /// The 13 VGG16 convolutions, `encoder.{0,2,5,…,28}`.
    pub encoder: Vec<LayerParams>,
    /// `center.block.0.conv` (3x3) and `center.block.1` (deconv), then the same for
    /// dec5, dec4, dec3, dec2.
    pub decoder: Vec<(LayerParams, LayerParams)>,
    /// `dec1.conv`.
    pub dec1: LayerParams,
    /// `final` (1x1 → K mask logits).
    pub final_conv: LayerParams,
    /// `center_Conv2d` (1x1 on the center → K, the middle head).
    pub center_head: LayerParams,
    /// Total elements.
    pub len: usize,
}

/// torchvision VGG16 `features` indices of the 13 convolutions.
pub const ENCODER_INDICES: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];

/// Prefixes of the decoder blocks, in order.
pub const DECODER_BLOCKS: [&str; 5] = ["center", "dec5", "dec4", "dec3", "dec2"];

impl ParamTable {
    /// The table for `cfg`.
    pub fn new(cfg: &UNetConfig) -> Self {
        let mut off = 0;
        let mut layer = |name: &str, kind: ParamKind| {
            let k = match kind {
                ParamKind::Conv { k, .. } | ParamKind::Deconv { k, .. } | ParamKind::Bias { k } => k,
            };
            let weight = ParamSpec { name: format!("{name}.weight"), kind, off };
            off += weight.len();
            let bias = ParamSpec { name: format!("{name}.bias"), kind: ParamKind::Bias { k }, off };
            off += bias.len();
            LayerParams { weight, bias }
        };
        let encoder = cfg
            .encoder_convs()
            .iter()
            .zip(ENCODER_INDICES)
            .map(|(&(c, k), i)| layer(&format!("encoder.{i}"), ParamKind::Conv { r: 3, c, k }))
            .collect();
        let decoder = DECODER_BLOCKS
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let (c, mid, out) = (cfg.decoder_in(i), cfg.dec_mid[i], cfg.dec_out[i]);
                let conv = layer(&format!("{block}.block.0.conv"), ParamKind::Conv { r: 3, c, k: mid });
                let deconv = layer(&format!("{block}.block.1"), ParamKind::Deconv { c: mid, k: out });
                (conv, deconv)
            })
            .collect();
        let dec1 = layer("dec1.conv", ParamKind::Conv { r: 3, c: cfg.dec1_in(), k: cfg.dec1 });
        let final_conv = layer("final", ParamKind::Conv { r: 1, c: cfg.dec1, k: cfg.classes });
        let center_head = layer("center_Conv2d", ParamKind::Conv { r: 1, c: cfg.dec_out[0], k: cfg.classes });
        ParamTable { encoder, decoder, dec1, final_conv, center_head, len: off }
    }

    /// Every layer, in table order.
    pub fn layers(&self) -> Vec<&LayerParams> {
        let mut v: Vec<&LayerParams> = self.encoder.iter().collect();
        for (conv, deconv) in &self.decoder {
            v.push(conv);
            v.push(deconv);
        }
        v.extend([&self.dec1, &self.final_conv, &self.center_head]);
        v
    }

    /// Every parameter, in table order.
    pub fn specs(&self) -> Vec<&ParamSpec> {
        self.layers().into_iter().flat_map(|l| [&l.weight, &l.bias]).collect()
    }
}

impl fmt::Display for ParamTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in self.specs() {
            writeln!(f, "{:<28} {:?}", s.name, s.pytorch_shape())?;
        }
        write!(f, "{} parameters", self.len)
    }
}
