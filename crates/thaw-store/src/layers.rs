//! The unpacked-layer store.
