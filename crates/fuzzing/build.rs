//! Links libtorch for this crate's tests and examples (see `build-support/`).

include!("../../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
