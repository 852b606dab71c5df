//! `config_value`: see `coord_discovery::fuzzing::config_value` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = coord_discovery::fuzzing::config_value(data) {
        panic!("{violation}");
    }
});
