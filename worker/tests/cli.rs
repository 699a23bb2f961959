//! The `lgaf` binary as a user runs it: init, embed, and their errors.

mod common;

use std::path::Path;

use common::*;
use lgaf_data::image_folder::{hflip, save_png};
use lgaf_data::synth::{Factor, SynthConfig, SynthDataset};

#[test]
fn init_then_embed_a_folder() {
    let dir = temp_dir("embed");
    let weights = dir.join("w.safetensors");
    ok(&with_model(&["init", "--seed", "3", "--out", s(&weights)]));

    // Four faces in a folder, named out of order; one of another size.
    let faces = dir.join("faces");
    std::fs::create_dir_all(&faces).unwrap();
    let ds = SynthDataset::new(SynthConfig::default());
    let imgs: Vec<Vec<u8>> = (0..3).map(|i| ds.render(i, 0, Factor::Clean).rgb).collect();
    save_png(&faces.join("c.png"), &imgs[2], 112, 112).unwrap();
    save_png(&faces.join("a.png"), &imgs[0], 112, 112).unwrap();
    save_png(&faces.join("b.png"), &imgs[1], 112, 112).unwrap();
    save_png(&faces.join("d.png"), &vec![90u8; 60 * 50 * 3], 60, 50).unwrap();

    let out = dir.join("emb.npy");
    let embed = |input: &Path, out: &Path, flip: bool| {
        let mut args = with_model(&["embed", "--weights", s(&weights), "--input", s(input)]);
        args.extend(["--out", s(out), "--batch-size", "3"]);
        if flip {
            args.push("--flip");
        }
        ok(&args);
        rows(out)
    };
    let all = embed(&faces, &out, false);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].len(), 128);
    for r in &all {
        let norm: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row norm {norm}");
    }

    // Row order is file-name order: a folder holding only b.png gives row 1.
    let single = dir.join("single");
    std::fs::create_dir_all(&single).unwrap();
    save_png(&single.join("b.png"), &imgs[1], 112, 112).unwrap();
    let one = embed(&single, &dir.join("one.npy"), false);
    assert!(close(&one[0], &all[1]), "b.png is not row 1");

    // The flip-summed embedding differs from the plain one, and is the same for a face and
    // its mirror image.
    let flipped = embed(&single, &dir.join("f.npy"), true);
    assert!(!close(&flipped[0], &one[0]));
    let mirror = dir.join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    save_png(&mirror.join("b.png"), &hflip(&imgs[1], 112, 112), 112, 112).unwrap();
    let mirrored = embed(&mirror, &dir.join("m.npy"), true);
    assert!(
        close(&mirrored[0], &flipped[0]),
        "flip test is not mirror-invariant"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_inputs_name_the_culprit() {
    let dir = temp_dir("errors");
    let weights = dir.join("w.safetensors");
    ok(&with_model(&["init", "--out", s(&weights)]));
    let faces = dir.join("faces");
    std::fs::create_dir_all(&faces).unwrap();
    save_png(&faces.join("a.png"), &vec![0u8; 112 * 112 * 3], 112, 112).unwrap();
    std::fs::write(faces.join("broken.jpg"), b"not a jpeg at all").unwrap();
    let out = dir.join("e.npy");

    let mut args = with_model(&["embed", "--weights", s(&weights), "--input", s(&faces)]);
    args.extend(["--out", s(&out)]);
    let err = fails(&args);
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(!out.exists());

    // Weights of another width: the error names a tensor and both shapes.
    let mut args = vec![
        "embed",
        "--weights",
        s(&weights),
        "--input",
        s(&faces),
        "--out",
        s(&out),
    ];
    args.extend(["--arch", "r18", "--width", "0.5", "--embedding-size", "128"]);
    let err = fails(&args);
    assert!(
        err.contains("has shape") && err.contains("expects"),
        "{err}"
    );

    // Unknown arch: clap names the flag and the choices.
    let err = fails(&["init", "--arch", "r101", "--out", s(&weights)]);
    assert!(err.contains("r101") && err.contains("r100"), "{err}");

    // A bad argument is refused before anything is touched: `demo --steps 0` used to
    // empty --out first.
    let err = fails(&["demo", "--out", s(&dir), "--steps", "0"]);
    assert!(err.contains("--steps"), "{err}");
    assert!(
        weights.is_file() && faces.join("a.png").is_file(),
        "--out was emptied"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn help_explains_every_flag() {
    let help = ok(&["embed", "--help"]);
    for flag in [
        "--arch",
        "--fusion",
        "--heads",
        "--weights",
        "--input",
        "--out",
        "--flip",
        "--device",
        "--batch-size",
    ] {
        assert!(help.contains(flag), "embed --help lacks {flag}");
    }
    let help = ok(&["--help"]);
    for cmd in ["init", "embed", "train", "demo"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
}
