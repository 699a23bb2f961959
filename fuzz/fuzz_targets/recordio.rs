#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (lgaf_fuzzing::target("recordio").expect("a target of lgaf-fuzzing").run)(data)
});
