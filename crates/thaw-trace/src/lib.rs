//! Trace readers, analysis, association mining, file-level recording, reports with plots, and the cache simulator.
