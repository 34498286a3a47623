//! Links the `thaw` executable as position-dependent (`-no-pie`).
//!
//! Every `thaw run` and every sandbox helper the daemon starts is a fresh exec of this binary,
//! so its start-up is on the critical path of a sandbox. As a position-independent executable
//! the dynamic loader must apply tens of thousands of relative relocations at each start,
//! dirtying hundreds of pages; linked at a fixed address there are almost none. Measured here:
//! `thaw --version` 2.0 ms as PIE, 1.5 ms without (`perf stat -r 100`, page faults 337 -> 171).
//! The crates are still compiled as position-independent code, which links fine either way.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=thaw=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
