//! Name mapping: every name a weight file may use for a UNet16 parameter, mapped to
//! the canonical (PyTorch `state_dict`) name the parameter table uses.
//!
//! Three sources of other names exist in the wild: `nn.DataParallel` prefixes every
//! key with `module.`; the paper's model keeps its VGG16 convolutions twice, once as
//! `encoder.N` and once inside the `conv1`…`conv5` blocks built from the same
//! modules (so a real `state_dict` carries both, holding the same tensor); and
//! torchvision's VGG16 calls the encoder `features`.

/// `convB.J` prefixes of the paper's model and the `encoder` index each one aliases:
/// `conv1 = Sequential(encoder[0], relu, encoder[2], relu)`, and so on.
const BLOCK_ALIASES: [(&str, usize); 13] = [
    ("conv1.0", 0),
    ("conv1.2", 2),
    ("conv2.0", 5),
    ("conv2.2", 7),
    ("conv3.0", 10),
    ("conv3.2", 12),
    ("conv3.4", 14),
    ("conv4.0", 17),
    ("conv4.2", 19),
    ("conv4.4", 21),
    ("conv5.0", 24),
    ("conv5.2", 26),
    ("conv5.4", 28),
];

/// The canonical name of `name`: a leading `module.` removed, then `convB.J.*` and
/// torchvision's `features.N.*` renamed to `encoder.N.*` (the suffix, `weight` or
/// `bias`, is kept). Names that are none of these come back unchanged, so an
/// unknown tensor is still reported under the name the file gives it.
pub fn canonical_name(name: &str) -> String {
    let name = name.strip_prefix("module.").unwrap_or(name);
    if let Some(rest) = name.strip_prefix("features.") {
        return format!("encoder.{rest}");
    }
    for (alias, index) in BLOCK_ALIASES {
        if let Some(suffix) = name.strip_prefix(alias).and_then(|s| s.strip_prefix('.')) {
            return format!("encoder.{index}.{suffix}");
        }
    }
    name.to_string()
}

/// True for the names of a full torchvision VGG16 file: its `features` (the encoder)
/// and its `classifier` (the fully connected layers UNet16 has no use for).
pub(crate) fn is_torchvision_features(name: &str) -> bool {
    name.strip_prefix("module.").unwrap_or(name).starts_with("features.")
}

/// True for torchvision VGG16's fully connected layers, dropped on import.
pub(crate) fn is_torchvision_classifier(name: &str) -> bool {
    name.strip_prefix("module.").unwrap_or(name).starts_with("classifier.")
}
