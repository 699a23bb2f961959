//! Links libtorch for the worker's binaries and tests (see `build-support/`).

include!("../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
