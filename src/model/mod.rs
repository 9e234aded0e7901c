//! UNet16 with two classification heads: configuration, parameters, the
//! activation plan, initialisation, and the forward and backward passes written
//! out layer by layer.

pub mod config;
pub mod init;
pub mod packing;
pub mod params;
pub mod plan;
pub mod unet;

pub use config::UNetConfig;
pub use params::{ParamKind, ParamSpec, ParamTable};
pub use plan::{Plan, PlanKind, View};
pub use unet::{UNet16, Workspace};
