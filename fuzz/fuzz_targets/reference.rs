#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| thaw_oci::fuzzing::reference(data));
