//! Trace readers, analysis, association mining, reports with plots, synthetic traces and the
//! trace-driven cache simulator (issue 3).
//!
//! Architecture invariant: this crate reads traces and writes reports; it knows nothing of HTTP
//! servers, stores or sandboxes. The simulator drives the same `thaw_policy` objects the live
//! store runs, through the same `lookup`/`admit` protocol.
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
