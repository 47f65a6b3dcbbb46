pub mod config;
pub mod routing;
