//! Sandboxes from pre-created parts: rootfs assembly, namespaces, cgroups, seccomp, capabilities, pools, templates.
