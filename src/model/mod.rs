//! UNet16 with two classification heads: configuration, parameters, and the
//! forward and backward passes written out layer by layer.

pub mod config;
pub mod params;

pub use config::UNetConfig;
pub use params::{ParamKind, ParamSpec, ParamTable};
