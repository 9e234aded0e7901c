//! Data: the ISIC 2018 Task 2 folder layout and file names shared by every reader
//! and writer, and the synthetic generator (`synth`) that produces that layout.

pub mod augment;
pub mod batch;
pub mod cache;
pub mod image_file;
pub mod isic;
pub mod synth;

/// The five lesion attributes, in the model's channel order (their home is
/// [`crate::attributes`]; the file names below are built from them).
pub use crate::attributes::ATTRIBUTES;

/// Folder of training images (`ISIC_<id>.jpg`) under a data root.
pub const TRAIN_IMAGE_DIR: &str = "ISIC2018_Task1-2_Training_Input";

/// Folder of Task 2 ground-truth masks under a data root.
pub const TRAIN_MASK_DIR: &str = "ISIC2018_Task2_Training_GroundTruth_v3";

/// `ISIC_<id>.jpg`, the image of `id` (7 digits, e.g. `0000000`).
pub fn image_file_name(id: &str) -> String {
    format!("ISIC_{id}.jpg")
}

/// `ISIC_<id>_attribute_<attribute>.png`, the mask of `attribute` for image `id`.
pub fn mask_file_name(id: &str, attribute: &str) -> String {
    format!("ISIC_{id}_attribute_{attribute}.png")
}

/// Reads a text file of at most `limit` bytes (a split CSV, a run's metrics): a
/// larger file, a folder or a special file such as `/dev/zero` is an error naming
/// it, and no more than `limit` bytes are ever read.
pub fn read_text(path: &std::path::Path, limit: u64) -> crate::Result<String> {
    use std::io::Read;
    let data_err = |reason: String| crate::Error::Data { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| crate::Error::io(path, e))?;
    if !meta.is_file() {
        return Err(data_err(format!("is {}, not a regular file", crate::output::kind(path))));
    }
    if meta.len() > limit {
        return Err(data_err(format!("is {} bytes long, more than the {limit} this file may have", meta.len())));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit).read_to_string(&mut text))
        .map_err(|e| crate::Error::io(path, e))?;
    Ok(text)
}
