//! Ferroway: an API gateway and reverse proxy.
//!
//! The library holds everything; `main.rs` is only the command line. See DESIGN.md in the
//! shared folder for how a request travels through these modules.

pub mod admin;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod http1;
pub mod middleware;
pub mod observe;
pub mod proxy;
pub mod rewind;
pub mod routing;
pub mod send;
pub mod server;
pub mod snapshot;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod upstream;
pub mod worker;
