//! lesionseg: the multi-task U-Net of ISIC 2018 Task 2 (lesion attribute
//! segmentation) on hand-written kernels, with a CPU backend that is both the
//! fallback and the reference. See docs/ARCHITECTURE.md for the architecture.

pub mod attributes;
pub mod backend;
pub mod capi;
pub mod collective;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod eval;
pub mod forward;
pub mod info;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod nvtx;
pub mod output;
pub mod overlay;
pub mod perfmodel;
pub mod plot;
pub mod predict;
pub mod predictor;
pub mod profile;
pub mod resources;
pub mod tensor;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
