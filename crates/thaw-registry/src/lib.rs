//! OCI Distribution server and pull-through mirror: single-flight streaming misses, tenants, metrics, request trace.
