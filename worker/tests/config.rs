//! The documented example config is the embedded default, key for key, and overrides work.

use std::path::Path;

use lgaf_worker::TrainConfig;

fn example() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/train.toml"
    ))
}

/// Dotted keys of a JSON object's leaves.
fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(v, &key, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

// One test, not two: the override half sets process-wide environment variables that the
// defaults half must not see.
#[test]
fn example_file_defaults_and_overrides() {
    the_example_file_is_exactly_the_defaults_and_lists_every_key();
    files_and_environment_override_the_defaults();
}

fn the_example_file_is_exactly_the_defaults_and_lists_every_key() {
    // Environment overrides would make this test lie.
    assert!(std::env::vars().all(|(k, _)| !k.starts_with("LGAF__")));
    let from_file = TrainConfig::load(Some(example())).unwrap();
    assert_eq!(from_file, TrainConfig::default());

    let text = std::fs::read_to_string(example()).unwrap();
    let mut all = Vec::new();
    keys(
        &serde_json::to_value(TrainConfig::default()).unwrap(),
        "",
        &mut all,
    );
    for key in all {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.lines().any(|l| {
                let l = l.trim_start_matches("# ").trim();
                l.starts_with(&format!("{leaf} ="))
            }),
            "configs/train.toml does not document `{key}`"
        );
    }
}

fn files_and_environment_override_the_defaults() {
    let dir = std::env::temp_dir().join(format!("lgaf-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.toml");
    std::fs::write(&file, "[model]\narch = \"r18\"\n[optim]\nlr = 0.05\n").unwrap();
    std::env::set_var("LGAF__OPTIM__MOMENTUM", "0.5");
    std::env::set_var("LGAF__OPTIM__LR_STEPS", "3,4");
    let cfg = TrainConfig::load(Some(&file));
    std::env::remove_var("LGAF__OPTIM__MOMENTUM");
    std::env::remove_var("LGAF__OPTIM__LR_STEPS");
    let cfg = cfg.unwrap();
    assert_eq!(cfg.model.arch, lgaf_model::Arch::R18);
    assert_eq!(cfg.optim.lr, 0.05);
    assert_eq!(cfg.optim.momentum, 0.5);
    assert_eq!(cfg.optim.lr_steps, vec![3.0, 4.0]);
    assert_eq!(cfg.model.heads, 4);

    std::fs::write(&file, "[optim]\nlearning_rate = 0.05\n").unwrap();
    let err = TrainConfig::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("learning_rate"), "{err}");
    std::fs::write(&file, "[model]\nheads = 3\n").unwrap();
    let err = TrainConfig::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("heads"), "{err}");
    let err = TrainConfig::load(Some(&dir.join("missing.toml")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
