//! The fuzz targets' bodies: one function per parser of bytes that come from outside the
//! process (datasets, checkpoints, the store's documents, the config, gRPC requests).
//!
//! Each takes arbitrary bytes and must return without panicking, hanging or exhausting
//! memory, whatever they hold; refusing them with an error is the expected outcome. The
//! libFuzzer harnesses under `fuzz/` (nightly, `cargo fuzz`) are one line each over these,
//! and `tests/corpus.rs` replays the kept corpus and the findings (copied into
//! `fuzz/regressions/` once fixed) through the same functions on stable Rust, so a found
//! crash or hang stays a test in `make test`.

mod documents;
mod formats;
mod recordio;
pub mod requests;
pub mod seeds;

/// A fuzz target: its name (the file under `fuzz/fuzz_targets/`, the folders under
/// `fuzz/corpus/` and `fuzz/regressions/`) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "recordio",
        run: recordio::pack_files,
    },
    Target {
        name: "verification_bin",
        run: formats::verification_bin,
    },
    Target {
        name: "npy",
        run: formats::npy,
    },
    Target {
        name: "image",
        run: formats::image,
    },
    Target {
        name: "safetensors",
        run: formats::safetensors,
    },
    Target {
        name: "store_documents",
        run: documents::store_documents,
    },
    Target {
        name: "config_toml",
        run: documents::config_toml,
    },
    Target {
        name: "grpc_requests",
        run: requests::session,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}
