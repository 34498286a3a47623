//! Trace readers, analysis, association mining, reports with plots, synthetic traces, the
//! trace-driven cache simulator, and file-level recording.
//!
//! Architecture invariant: this crate reads traces and writes reports; it knows nothing of HTTP
//! servers or stores, and builds no sandboxes of its own. The one part that runs anything,
//! [`files`], runs an external OCI runtime (runc or crun) to record which files a container
//! reads. The simulator drives the same `thaw_policy` objects the live store runs, through the
//! same `lookup`/`admit` protocol.
//!
//! Data flow: a reader ([`read`]) turns any supported format into [`event::Event`]s; the
//! simulator ([`sim`]) and the analysis ([`analyze`]) consume them; [`report`] renders analysis
//! and simulation results; [`gen`] writes synthetic traces in thaw's format (or `oracleGeneral`).

pub mod analyze;
pub mod category;
pub mod event;
pub mod files;
pub mod gen;
pub mod hist;
pub mod read;
pub mod report;
pub mod rng;
pub mod sim;
