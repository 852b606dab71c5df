//! `semaphore_metadata`: see `coord_lock::fuzzing::semaphore_metadata` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = coord_lock::fuzzing::semaphore_metadata(data) {
        panic!("{violation}");
    }
});
