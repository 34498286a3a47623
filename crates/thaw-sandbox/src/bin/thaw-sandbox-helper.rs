//! The sandbox helper process (see `thaw_sandbox::helper`). Started by a `Runtime` with its
//! control socket at descriptor 3; not meant to be run by hand.

fn main() {
    thaw_sandbox::helper::main()
}
