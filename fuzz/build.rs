//! Links libtorch for the harnesses (see `build-support/`).

include!("../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
