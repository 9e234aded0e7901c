//! lesionseg: the multi-task U-Net of ISIC 2018 Task 2 (lesion attribute
//! segmentation) on hand-written kernels, with a CPU backend that is both the
//! fallback and the reference. See DESIGN.md for the architecture.

pub mod backend;
pub mod demo;
pub mod device;
pub mod error;
pub mod forward;
pub mod info;
pub mod model;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
