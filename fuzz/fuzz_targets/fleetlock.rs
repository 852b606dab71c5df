//! `fleetlock`: see `coord_fuzz::fleetlock` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = coord_fuzz::fleetlock(data) {
        panic!("{violation}");
    }
});
