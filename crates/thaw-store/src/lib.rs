//! Content-addressed blob and layer store: atomic verified commits, redb metadata, policy-driven eviction, pins.
