//! Links libtorch for the model crate's tests (see `build-support/`).

include!("../../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
    // Device-aware autocast (bf16, CPU) that tch does not expose; see the file's header.
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/autocast.cpp")
        .compile("lgaf_autocast");
}
