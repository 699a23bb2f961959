//! Writes every target's seeds into `fuzz/corpus/<target>/seed-<n>` (`make fuzz-seeds`),
//! replacing the earlier seeds (every `seed-*` file) and leaving what fuzzing added.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut by_target = BTreeMap::<&str, Vec<Vec<u8>>>::new();
    for (target, input) in lgaf_fuzzing::seeds::all() {
        by_target.entry(target).or_default().push(input);
    }
    for (target, inputs) in by_target {
        let folder = corpus.join(target);
        if let Err(e) = write_seeds(&folder, &inputs) {
            eprintln!("write_seeds: {}: {e}", folder.display());
            std::process::exit(1);
        }
        println!("{target}: {} seed(s)", inputs.len());
    }
}

fn write_seeds(folder: &PathBuf, inputs: &[Vec<u8>]) -> std::io::Result<()> {
    fs::create_dir_all(folder)?;
    for entry in fs::read_dir(folder)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            fs::remove_file(path)?;
        }
    }
    for (n, input) in inputs.iter().enumerate() {
        fs::write(folder.join(format!("seed-{n}")), input)?;
    }
    Ok(())
}
