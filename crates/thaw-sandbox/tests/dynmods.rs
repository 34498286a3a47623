//! `favordynmods` on the cgroup2 mount: switched on and back off, other mount flags kept.
//! (The flag is host-wide; this test restores what it found.)

use thaw_sandbox::cgroup;

#[test]
fn favor_dynmods_is_switched_and_restored() {
    if !thaw_sandbox::testsupport::require_privileges("favor_dynmods_is_switched_and_restored") {
        return;
    }
    let Some(before) = cgroup::dynmods_favored().unwrap() else {
        assert!(cgroup::set_favor_dynmods(true).unwrap_err().to_string().contains("cgroup2"));
        eprintln!("skipping favor_dynmods_is_switched_and_restored: no cgroup2 mount");
        return;
    };
    let flags = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .map(|l| l.rsplit(' ').next().unwrap().split(',').filter(|o| *o != "favordynmods").map(str::to_string).collect::<Vec<_>>())
            .unwrap()
    };
    let others = flags();
    assert!(cgroup::set_favor_dynmods(!before).unwrap(), "the flag changed");
    assert_eq!(cgroup::dynmods_favored().unwrap(), Some(!before));
    assert!(!cgroup::set_favor_dynmods(!before).unwrap(), "setting it again changes nothing");
    assert_eq!(flags(), others, "the mount's other flags are kept");
    assert!(cgroup::set_favor_dynmods(before).unwrap());
    assert_eq!(cgroup::dynmods_favored().unwrap(), Some(before));
    assert_eq!(flags(), others);
}
