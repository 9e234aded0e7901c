//! The five lesion attributes of ISIC 2018 Task 2, defined once for every layer: their
//! order is the channel order of the model's outputs, of the training targets and of
//! every metric, and their names are the `<attribute>` part of the challenge's file
//! names (`ISIC_<id>_attribute_<attribute>.png`).

/// The five attributes, in the model's channel order.
pub const ATTRIBUTES: [&str; 5] = ["pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules"];

/// Number of attributes, K: the model's output channels and the targets' channels.
pub const NUM_ATTRIBUTES: usize = ATTRIBUTES.len();

/// The index of `name` in [`ATTRIBUTES`].
pub fn attribute_index(name: &str) -> Option<usize> {
    ATTRIBUTES.iter().position(|a| *a == name)
}
