//! Conformance suite for [`StoreFs`] implementations (filled in below).
