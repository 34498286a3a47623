//! The cold path end to end.

mod common;

use thaw_sandbox::ExitStatus;

#[test]
fn cold_echo_hi() {
    let Some(f) = common::Fixture::new("cold_echo_hi") else { return };
    let out = f.rt.run_output(&f.spec(&["echo", "hi"])).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status, ExitStatus::Code(0));
    eprintln!("{:?}", out.timings);
}

#[test]
fn cold_exit_code_and_missing_program() {
    let Some(f) = common::Fixture::new("cold_exit_code_and_missing_program") else { return };
    let out = f.rt.run_output(&f.spec(&["sh", "-c", "exit 7"])).unwrap();
    assert_eq!(out.status, ExitStatus::Code(7));
    let e = f.rt.run_output(&f.spec(&["no-such-program"])).unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");
}
