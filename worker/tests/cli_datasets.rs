//! `lgaf pack`, `lgaf inspect`, `lgaf eval` and `lgaf embed --input X.bin` as a user runs
//! them, and the loader reading a pack exactly as it reads the folder it was made from.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use lgaf_data::augment::AugmentConfig;
use lgaf_data::image_folder::save_png;
use lgaf_data::recordio::RecordPack;
use lgaf_data::sampler::ShardedSampler;
use lgaf_data::source::{FaceSource, FolderSource};
use lgaf_data::synth::{verification_pairs, Factor, SynthConfig, SynthDataset};
use lgaf_worker::loader::{Loader, LoaderSettings};
use serde_json::Value;

fn jpeg(rgb: &[u8], side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(rgb, side, side, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// `root/person_<k>/<j>.jpg`: `identities x per_identity` synthetic faces.
fn write_jpeg_folder(root: &Path, identities: u32, per_identity: u64) {
    let ds = SynthDataset::new(SynthConfig::default());
    for id in 0..identities {
        let dir = root.join(format!("person_{id:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for v in 0..per_identity {
            let face = ds.render(id, v, Factor::Clean);
            std::fs::write(dir.join(format!("{v}.jpg")), jpeg(&face.rgb, 112)).unwrap();
        }
    }
}

fn json(args: &[&str]) -> Value {
    let text = ok(args);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in:\n{text}"));
    serde_json::from_str(&text[start..text.rfind('}').unwrap() + 1]).unwrap()
}

fn batches(source: Arc<dyn FaceSource>) -> Vec<(Vec<i64>, Vec<u8>)> {
    let sampler = ShardedSampler::new(source.len(), 7, 0, 1, 4).unwrap();
    let settings = LoaderSettings {
        workers: 2,
        prefetch: 2,
        strict: true,
        max_bad_fraction: 0.5,
        bad_fraction_min_reads: 1000,
        augment: AugmentConfig::default(),
        seed: 7,
    };
    let mut loader = Loader::start(source, sampler, settings, 0..12).unwrap();
    std::iter::from_fn(|| loader.next_batch().unwrap())
        .map(|b| (b.labels.clone(), b.images.clone()))
        .collect()
}

#[test]
fn a_pack_holds_the_folder_and_loads_identically() {
    let dir = temp_dir("pack");
    let faces = dir.join("faces");
    write_jpeg_folder(&faces, 6, 5);
    let rec = dir.join("train.rec");
    let out = ok(&["pack", s(&faces), s(&rec), "--threads", "2"]);
    assert!(out.contains("30 images of 6 identities"), "{out}");
    assert!(out.contains("30 stored as they were, 0 resized"), "{out}");

    for path in [&rec, &faces] {
        let report = json(&["inspect", "--json", s(path)]);
        assert_eq!(report["images"], 30, "{report}");
        assert_eq!(report["identities"], 6, "{report}");
        assert_eq!(report["bad"], 0, "{report}");
        assert_eq!(report["image_sizes"]["JPEG 112x112"], 30, "{report}");
        assert_eq!(report["images_per_identity"]["min"], 5, "{report}");
    }

    // The loader sees the same labelled pixels from the pack as from the folder.
    let from_folder = batches(Arc::new(FolderSource::open(&faces).unwrap()));
    let from_pack = batches(Arc::new(RecordPack::open(&rec).unwrap()));
    assert_eq!(from_folder.len(), 12);
    assert!(
        from_folder == from_pack,
        "pack batches differ from folder batches"
    );

    // Without its .idx the pack is indexed again by scanning, and says so.
    let idx = dir.join("train.idx");
    let original_idx = std::fs::read(&idx).unwrap();
    std::fs::remove_file(&idx).unwrap();
    let out = ok(&["inspect", s(&rec)]);
    assert!(out.contains("rebuilt it by scanning"), "{out}");
    assert!(out.contains("images       30"), "{out}");
    assert_eq!(std::fs::read(&idx).unwrap(), original_idx);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn packing_names_bad_images_and_resizes_odd_sizes() {
    let dir = temp_dir("pack-bad");
    let faces = dir.join("faces");
    write_jpeg_folder(&faces, 2, 3);
    let ds = SynthDataset::new(SynthConfig::default());
    let small = image::imageops::resize(
        &image::RgbImage::from_raw(112, 112, ds.render(0, 9, Factor::Clean).rgb).unwrap(),
        96,
        96,
        image::imageops::FilterType::Triangle,
    );
    save_png(&faces.join("person_00/odd.png"), small.as_raw(), 96, 96).unwrap();
    std::fs::write(
        faces.join("person_01/broken.jpg"),
        b"\xFF\xD8\xFF\xE0 truncated",
    )
    .unwrap();

    let rec = dir.join("faces.rec");
    let err = fails(&["pack", s(&faces), s(&rec)]);
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(!rec.exists(), "a failed pack must not leave a .rec behind");

    let out = ok(&["pack", "--skip-bad", s(&faces), s(&rec)]);
    assert!(out.contains("7 images of 2 identities"), "{out}");
    assert!(out.contains("6 stored as they were, 1 resized"), "{out}");
    assert!(
        out.contains("skipped 1") && out.contains("broken.jpg"),
        "{out}"
    );

    let folder = json(&["inspect", "--json", s(&faces)]);
    assert_eq!(folder["bad"], 1, "{folder}");
    assert_eq!(folder["image_sizes"]["PNG 96x96"], 1, "{folder}");
    assert!(folder["problems"][0]
        .as_str()
        .unwrap()
        .contains("broken.jpg"));
    let pack = json(&["inspect", "--json", s(&rec)]);
    assert_eq!(pack["image_sizes"]["JPEG 112x112"], 7, "{pack}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A verification .bin of `pairs` synthetic pairs (PNG-encoded), as insightface lays it out.
fn write_bin(path: &Path, pairs: usize, seed: u64) {
    let cfg = SynthConfig::default();
    let set = verification_pairs(&cfg, 1000, 30, pairs, None, seed);
    let dir = path.with_extension("tmp");
    std::fs::create_dir_all(&dir).unwrap();
    let images: Vec<Vec<u8>> = set
        .images
        .iter()
        .map(|img| {
            let f = dir.join("x.png");
            save_png(&f, &img.rgb, 112, 112).unwrap();
            std::fs::read(&f).unwrap()
        })
        .collect();
    lgaf_eval::write_bin(path, &images, &set.issame).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn eval_reports_verification_and_retrieval() {
    let dir = temp_dir("eval");
    let weights = dir.join("w.safetensors");
    ok(&with_model(&["init", "--seed", "1", "--out", s(&weights)]));
    let (a, b) = (dir.join("lfw.bin"), dir.join("agedb_30.bin"));
    write_bin(&a, 40, 1);
    write_bin(&b, 30, 2);
    let base = with_model(&["eval", "--weights", s(&weights), "--device", "cpu"]);

    let mut one = base.clone();
    one.extend(["--bin", s(&a), "--json"]);
    let v = json(&one);
    assert_eq!(v["pairs"], 40, "{v}");
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{v}");
    assert!(v["std"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(v["tar_at_far"]["tar"].as_f64().is_some(), "{v}");

    let mut two = base.clone();
    two.extend(["--bin", s(&a), "--bin", s(&b), "--json"]);
    let v = json(&two);
    assert_eq!(v["lfw"]["accuracy"].as_f64().unwrap(), acc, "{v}");
    assert_eq!(v["agedb_30"]["pairs"], 30, "{v}");

    let mut table = base.clone();
    table.extend(["--bin", s(&a), "--bin", s(&b)]);
    let out = ok(&table);
    assert!(
        out.contains("TAR@FAR=1e-3") && out.contains("agedb_30"),
        "{out}"
    );

    // `embed --input X.bin`: the 2P images in file order.
    let npy = dir.join("lfw.npy");
    let mut embed = with_model(&["embed", "--weights", s(&weights), "--input", s(&a)]);
    embed.extend(["--out", s(&npy)]);
    ok(&embed);
    assert_eq!(rows(&npy).len(), 80);

    // Retrieval: every probe's identity is in a gallery (with distractors) of fewer than 20
    // entries, so rank-20 is 100%.
    let ds = SynthDataset::new(SynthConfig::default());
    let (probe, gallery, distractors) =
        (dir.join("probe"), dir.join("gallery"), dir.join("distract"));
    for id in 0..3u32 {
        for (root, variants) in [(&probe, 0..1u64), (&gallery, 1..3u64)] {
            let d = root.join(format!("p{id}"));
            std::fs::create_dir_all(&d).unwrap();
            for v in variants {
                save_png(
                    &d.join(format!("{v}.png")),
                    &ds.render(id, v, Factor::Clean).rgb,
                    112,
                    112,
                )
                .unwrap();
            }
        }
    }
    std::fs::create_dir_all(&distractors).unwrap();
    for k in 0..4u32 {
        let rgb = ds.render(500 + k, 0, Factor::Clean).rgb;
        save_png(&distractors.join(format!("{k}.png")), &rgb, 112, 112).unwrap();
    }
    let mut r = base.clone();
    r.extend([
        "--probe",
        s(&probe),
        "--gallery",
        s(&gallery),
        "--distractors",
        s(&distractors),
        "--json",
    ]);
    let v = json(&r);
    assert_eq!(v["retrieval"]["probes"], 3, "{v}");
    assert_eq!(v["retrieval"]["absent"], 0, "{v}");
    assert_eq!(v["retrieval"]["rank20"].as_f64(), Some(1.0), "{v}");
    let r1 = v["retrieval"]["rank1"].as_f64().unwrap();
    assert!(r1 <= v["retrieval"]["rank5"].as_f64().unwrap(), "{v}");

    // A truncated .bin is an error naming the file.
    let broken = dir.join("broken.bin");
    let bytes = std::fs::read(&a).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let mut bad = base.clone();
    bad.extend(["--bin", s(&broken)]);
    let err = fails(&bad);
    assert!(err.contains("broken.bin"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn train_reads_a_pack_and_evaluates_bin_files() {
    let dir = temp_dir("train-pack");
    let faces = dir.join("faces");
    write_jpeg_folder(&faces, 8, 6);
    let rec = dir.join("train.rec");
    ok(&["pack", s(&faces), s(&rec)]);
    let bin = dir.join("lfw.bin");
    write_bin(&bin, 20, 3);
    // A list in the environment is comma-separated.
    let bins = format!("{},{}", bin.display(), bin.display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lgaf"))
        .args(["train", "--device", "cpu", "--max-steps", "4"])
        .args(["--checkpoint-dir", s(&dir.join("ckpt"))])
        .envs([
            ("RUST_LOG", "info"),
            ("LGAF__DATA__SOURCE", "recordio"),
            ("LGAF__DATA__PATH", s(&rec)),
            ("LGAF__DATA__BATCH_SIZE", "8"),
            ("LGAF__DATA__WORKERS", "2"),
            ("LGAF__MODEL__ARCH", "r18"),
            ("LGAF__MODEL__WIDTH", "0.125"),
            ("LGAF__MODEL__EMBEDDING_SIZE", "64"),
            ("LGAF__TRAIN__LOG_EVERY", "2"),
            ("LGAF__TRAIN__PROGRESS", "false"),
            ("LGAF__EVAL__EVERY_STEPS", "2"),
            ("LGAF__EVAL__PAIRS", "20"),
            ("LGAF__EVAL__BINS", bins.as_str()),
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    // Both listed files at steps 2 and 4 (step 4 is the last: not evaluated twice).
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("set=\"lfw\"")).collect();
    assert_eq!(lines.len(), 4, "{log}");
    // Synthetic held-out identities say nothing about a real dataset: not run.
    assert!(!log.contains("held-out"), "{log}");
    assert!(lines[0].contains("tar_at_far_1e_3"), "{log}");
    assert!(log.contains("bad_records=0"), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}
