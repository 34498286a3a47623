//! thaw's OCI Distribution server and pull-through mirror.
//!
//! - [`registry::Registry`] answers the distribution API (v1.1): manifests and blobs (GET, HEAD,
//!   single Range), tag listing with pagination, and pushes (monolithic, chunked, cross-repository
//!   mount) into local repositories, so thaw is also a standalone registry.
//! - As a mirror it routes each request to an upstream (containerd's `ns` parameter, a path prefix,
//!   or the default upstream), fetches misses once however many clients ask ([`flight`]), streams
//!   the bytes to every waiter as they arrive, and commits the blob to the store only once verified.
//! - [`auth`] decides which tenant may be served which cached content.
//! - [`trace`] appends every answered request to the request trace (`thaw-record`'s schema) and
//!   [`metrics`] exports Prometheus metrics.
//!
//! Architecture invariant: this crate never touches files itself (the store does); it never
//! decides what to evict (the store's policy does).

pub mod auth;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod flight;
pub mod metrics;
pub mod pull;
pub mod registry;
pub mod route;
pub mod server;
pub mod trace;
pub mod upstream;

pub use config::{RegistryConfig, UpstreamConfig};
pub use registry::Registry;
