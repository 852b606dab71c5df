//! `service_entry`: see `coord_discovery::fuzzing::service_entry` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = coord_discovery::fuzzing::service_entry(data) {
        panic!("{violation}");
    }
});
