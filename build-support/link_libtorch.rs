// Shared by the build scripts of every crate that links libtorch (`include!`d, not a crate).
//
// torch-sys finds libtorch through the project virtualenv (LIBTORCH_USE_PYTORCH=1) and exports
// its library folder as DEP_TCH_LIBTORCH_LIB. We add two things it does not do:
// - an rpath to that folder, so binaries and test executables run from the repo without
//   LD_LIBRARY_PATH;
// - an explicit, non-as-needed link of libtorch_cuda: nothing references its symbols directly,
//   so the linker would drop it and CUDA would be silently unavailable at run time.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if std::path::Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
