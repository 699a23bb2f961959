//! Every numeric config key has a declared range, checked when the config is loaded (file
//! or `LGAF__SECTION__KEY` override): the error names the key, the value and the range.

use std::sync::Mutex;

use lgaf_worker::TrainConfig;

/// Loading reads the process environment, and some tests here set `LGAF__*` variables:
/// every load holds this lock so no test sees another's overrides.
static ENV: Mutex<()> = Mutex::new(());

fn load(toml: &str) -> Result<TrainConfig, String> {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    TrainConfig::from_toml_str(toml).map_err(|e| e.to_string())
}

fn load_with_env(var: &str, value: &str) -> Result<TrainConfig, String> {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var(var, value);
    let result = TrainConfig::from_toml_str("").map_err(|e| e.to_string());
    std::env::remove_var(var);
    result
}

/// The error of `toml` names every one of `parts` (the key, the value, the range).
#[track_caller]
fn refused(toml: &str, parts: &[&str]) {
    match load(toml) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(msg) => {
            for part in parts {
                assert!(
                    msg.contains(part),
                    "`{part}` missing from: {msg}\n(config: {toml})"
                );
            }
        }
    }
}

#[test]
fn the_reported_values_are_refused_naming_key_value_and_range() {
    refused(
        "[model]\nkernels = [99999]",
        &["model.kernels", "99999", "1..=7"],
    );
    refused(
        "[data.synthetic]\nimages_per_identity = 1e12",
        &[
            "data.synthetic.images_per_identity",
            "1000000000000",
            "1..=65536",
        ],
    );
    refused(
        "[data.synthetic]\nidentities = 4e9",
        &["data.synthetic.identities", "4000000000", "2..=16777216"],
    );
    // 2^62 + 1 epochs: steps per epoch x epochs wrapped the u64 step count.
    refused(
        "[train]\nepochs = 4611686018427387905",
        &["train.epochs", "4611686018427387905", "1..=10000"],
    );
    refused("[optim]\nlr = -0.1", &["optim.lr", "-0.1", "(0, 10]"]);
    refused(
        "[optim]\nwarmup_epochs = nan",
        &["optim.warmup_epochs", "NaN", "[0, 10000]"],
    );
    refused("[loss]\nscale = 0.0", &["loss.scale", "0", "(0, 1024]"]);
    refused("[model.lgf]\nh = 0.0", &["model.lgf.h", "0", "(0, 10]"]);
    refused(
        "[data]\nbatch_size = 64.5",
        &["data.batch_size", "64.5", "not a whole number"],
    );
}

#[test]
fn a_nan_scale_is_blamed_on_the_scale_not_the_learning_rate() {
    let msg = load("[loss]\nscale = nan").unwrap_err();
    assert!(msg.contains("loss.scale") && msg.contains("NaN"), "{msg}");
    assert!(!msg.contains("optim.lr"), "{msg}");
}

#[test]
fn every_section_is_swept() {
    let cases: &[(&str, &[&str])] = &[
        // model
        ("[model]\nwidth = inf", &["model.width", "inf", "(0, 4]"]),
        (
            "[model]\nembedding_size = 0",
            &["model.embedding_size", "1..=4096"],
        ),
        (
            "[model]\nembedding_size = 100000",
            &["model.embedding_size", "100000"],
        ),
        (
            "[model]\nheads = 64\nembedding_size = 512",
            &["model.heads", "64", "1..=32"],
        ),
        ("[model]\nkernels = [2]", &["model.kernels", "2", "odd"]),
        ("[model]\nkernels = []", &["model.kernels", "empty"]),
        ("[model]\nkernels = [3, 3]", &["model.kernels", "twice"]),
        ("[model]\nkernels = [-1]", &["model.kernels", "-1"]),
        (
            "[model]\nmid_channels = 0",
            &["model.mid_channels", "0", "1..=1024"],
        ),
        (
            "[model]\nmid_channels = 1000000",
            &["model.mid_channels", "1000000"],
        ),
        ("[model]\ndropout = 1.0", &["model.dropout", "1", "[0, 1)"]),
        (
            "[model.lgf]\nalpha = 0.0",
            &["model.lgf.alpha", "0", "(0, 1]"],
        ),
        ("[model.lgf]\nh = inf", &["model.lgf.h", "inf"]),
        // A range holds even where the key is unused (global fusion builds no MHMS).
        (
            "[model]\nfusion = \"global\"\nkernels = [99999]",
            &["model.kernels", "99999"],
        ),
        // loss
        ("[loss]\nscale = -64.0", &["loss.scale", "-64"]),
        (
            "[loss]\nscale = 1e9",
            &["loss.scale", "1000000000", "(0, 1024]"],
        ),
        (
            "[loss]\nsample_rate = nan",
            &["loss.sample_rate", "NaN", "(0, 1]"],
        ),
        (
            "[loss]\nname = \"combined:1,nan,0\"",
            &["loss.name", "m2 = NaN", "[-3.14"],
        ),
        // data
        (
            "[data]\nbatch_size = 0",
            &["data.batch_size", "0", "1..=4096"],
        ),
        (
            "[data]\nbatch_size = 100000",
            &["data.batch_size", "100000"],
        ),
        ("[data]\nprefetch = 0", &["data.prefetch", "0", "1..=64"]),
        ("[data]\nprefetch = 1000", &["data.prefetch", "1000"]),
        (
            "[data]\nworkers = 100000",
            &["data.workers", "100000", "0..=256"],
        ),
        (
            "[data]\nworkers = 256\nbatch_size = 4096",
            &["data.batch_size", "1048576", "262144"],
        ),
        (
            "[data]\nmax_bad_fraction = -0.5",
            &["data.max_bad_fraction", "-0.5"],
        ),
        (
            "[data.augment]\nflip_prob = 1.5",
            &["data.augment.flip_prob", "1.5", "[0, 1]"],
        ),
        (
            "[data.augment]\nbrightness = inf",
            &["data.augment.brightness", "inf", "[0, 4]"],
        ),
        (
            "[data.augment]\ncontrast = 100.0",
            &["data.augment.contrast", "100"],
        ),
        (
            "[data.synthetic]\nidentities = 1",
            &["data.synthetic.identities", "1", "2..="],
        ),
        (
            "[data.synthetic]\nimages_per_identity = 0",
            &["data.synthetic.images_per_identity", "0"],
        ),
        // Each factor in range, the product not: identities x images would be 2^40.
        (
            "[data.synthetic]\nidentities = 16777216\nimages_per_identity = 65536",
            &["data.synthetic", "1099511627776", "67108864"],
        ),
        (
            "[data.synthetic]\nnuisance_prob = 2.0",
            &["data.synthetic.nuisance_prob", "2"],
        ),
        (
            "[data]\nbatch_size = 4096\n[data.synthetic]\nidentities = 2\nimages_per_identity = 1",
            &["data.batch_size", "4096", "2 images"],
        ),
        // train
        ("[train]\nepochs = 0", &["train.epochs", "0", "1..=10000"]),
        ("[train]\nepochs = 10001", &["train.epochs", "10001"]),
        ("[train]\nepochs = -5.0", &["train.epochs", "-5"]),
        (
            "[train]\nlog_every = 0",
            &["train.log_every", "0", "minimum 1"],
        ),
        // optim
        ("[optim]\nlr = 0.0", &["optim.lr", "0", "(0, 10]"]),
        ("[optim]\nlr = inf", &["optim.lr", "inf"]),
        (
            "[optim]\nmomentum = 1.0",
            &["optim.momentum", "1", "[0, 1)"],
        ),
        (
            "[optim]\nweight_decay = -1e-4",
            &["optim.weight_decay", "-0.0001"],
        ),
        (
            "[optim]\nlr_steps = [12.0, nan]",
            &["optim.lr_steps", "NaN"],
        ),
        (
            "[optim]\nlr_steps = [-1.0]",
            &["optim.lr_steps", "-1", "[0, 10000]"],
        ),
        (
            "[optim]\nlr_decay = 0.0",
            &["optim.lr_decay", "0", "(0, 1]"],
        ),
        ("[optim]\nlr_decay = 10.0", &["optim.lr_decay", "10"]),
        (
            "[optim]\nwarmup_epochs = -1.0",
            &["optim.warmup_epochs", "-1"],
        ),
        (
            "[optim]\nclip_grad_norm = nan",
            &["optim.clip_grad_norm", "NaN"],
        ),
        (
            "[checkpoint]\nupload_deadline_secs = 604801",
            &["checkpoint.upload_deadline_secs", "604801"],
        ),
        (
            "[optim]\nclip_grad_norm = -1.0",
            &["optim.clip_grad_norm", "-1"],
        ),
        // eval
        (
            "[eval]\nidentities = 1",
            &["eval.identities", "1", "2..=16777216"],
        ),
        (
            "[eval]\nidentities = 4000000000",
            &["eval.identities", "4000000000"],
        ),
        ("[eval]\npairs = 10", &["eval.pairs", "10", "20..=10000"]),
        ("[eval]\npairs = 1e9", &["eval.pairs", "1000000000"]),
        // Fractions given to integer keys anywhere (the loader used to round them).
        (
            "[train]\nepochs = 2.5",
            &["train.epochs", "2.5", "whole number"],
        ),
        (
            "[model]\nkernels = [1, 3.5]",
            &["model.kernels", "3.5", "whole number"],
        ),
        (
            "[checkpoint]\nkeep_last = 1.5",
            &["checkpoint.keep_last", "1.5"],
        ),
        ("[eval]\npairs = 600.5", &["eval.pairs", "600.5"]),
        ("[data]\nbatch_size = nan", &["data.batch_size", "NaN"]),
        ("[train]\nepochs = 1e300", &["train.epochs", "1e300"]),
        // Booleans and words the loader read as 1 or 0.
        (
            "[data]\nbatch_size = true",
            &["data.batch_size", "true", "boolean"],
        ),
        (
            "[data]\nbatch_size = \"yes\"",
            &["data.batch_size", "\"yes\"", "not a number"],
        ),
        ("[optim]\nlr = true", &["optim.lr", "boolean"]),
    ];
    for (toml, parts) in cases {
        refused(toml, parts);
    }
}

#[test]
fn environment_overrides_are_checked_too() {
    for (var, value, parts) in [
        (
            "LGAF__MODEL__KERNELS",
            "1,99999",
            &["model.kernels", "99999", "1..=7"][..],
        ),
        (
            "LGAF__TRAIN__EPOCHS",
            "4611686018427387905",
            &["train.epochs", "4611686018427387905"],
        ),
        (
            "LGAF__DATA__BATCH_SIZE",
            "64.5",
            &["data.batch_size", "64.5", "whole number"],
        ),
        ("LGAF__DATA__BATCH_SIZE", "nan", &["data.batch_size", "NaN"]),
        ("LGAF__OPTIM__LR", "NaN", &["optim.lr", "NaN"]),
        ("LGAF__LOSS__SCALE", "0", &["loss.scale", "0", "(0, 1024]"]),
        ("LGAF__MODEL__LGF__H", "0", &["model.lgf.h"]),
        (
            "LGAF__DATA__SYNTHETIC__IDENTITIES",
            "4000000000",
            &["data.synthetic.identities", "4000000000"],
        ),
    ] {
        let msg = match load_with_env(var, value) {
            Ok(_) => panic!("{var}={value} accepted"),
            Err(msg) => msg,
        };
        for part in parts {
            assert!(
                msg.contains(part),
                "{var}={value}: `{part}` missing from: {msg}"
            );
        }
    }
}

#[test]
fn values_at_the_bounds_are_accepted() {
    load("").unwrap();
    let cfg = load(
        "[model]\nwidth = 4.0\nkernels = [1, 3, 5, 7]\nheads = 32\nembedding_size = 4096\n\
         [model.lgf]\nh = 10.0\nalpha = 1.0\n\
         [loss]\nscale = 1024.0\nname = \"combined:4,-3.14,2\"\n\
         [data]\nbatch_size = 4096\nprefetch = 64\nworkers = 64\n\
         [data.synthetic]\nidentities = 65536\nimages_per_identity = 1024\n\
         [train]\nepochs = 10000\nmax_steps = 9223372036854775807\n\
         [optim]\nlr = 10.0\nlr_decay = 1.0\nwarmup_epochs = 10000.0\n\
         [checkpoint]\nkeep_last = 0\n\
         [eval]\nidentities = 16777216\npairs = 10000",
    )
    .unwrap();
    assert_eq!((cfg.train.epochs, cfg.data.batch_size), (10_000, 4096));
    // A whole number written as a float is the integer.
    assert_eq!(
        load("[data]\nbatch_size = 32.0").unwrap().data.batch_size,
        32
    );
}

#[test]
fn validate_checks_configs_built_in_code() {
    let mut cfg = TrainConfig::default();
    cfg.train.epochs = usize::MAX;
    let msg = cfg.validate().unwrap_err().to_string();
    assert!(
        msg.contains("train.epochs") && msg.contains("1..=10000"),
        "{msg}"
    );
    let mut cfg = TrainConfig::default();
    cfg.data.synthetic.identities = usize::MAX;
    cfg.data.synthetic.images_per_identity = usize::MAX;
    let msg = cfg.validate().unwrap_err().to_string();
    assert!(msg.contains("data.synthetic.identities"), "{msg}");
}
