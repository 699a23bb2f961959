#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (lgaf_fuzzing::target("store_documents").expect("a target of lgaf-fuzzing").run)(data)
});
