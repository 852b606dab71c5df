//! `keys`: see `coord_core::fuzzing::keys` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = coord_core::fuzzing::keys(data) {
        panic!("{violation}");
    }
});
