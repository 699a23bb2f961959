//! Replays what fuzzing kept through the targets' bodies, on stable Rust: the corpus under
//! `fuzz/corpus/<target>/` (inputs that reached new code) and the crashes, hangs and slow
//! inputs runs found, copied into `fuzz/regressions/<target>/` once fixed. An input that
//! panics fails, and so does one that runs past libFuzzer's timeout (10 s, as `make fuzz`
//! runs it): a hang found once stays caught.

use lgaf_fuzzing::{seeds, target, TARGETS};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `make fuzz`'s `-timeout`: an input running longer is a finding.
const HANG: Duration = Duration::from_secs(10);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files in `folder`, sorted; none if it does not exist.
fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("listing a corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `input` through `run`; the panic's message, if it panicked.
fn panic_of(run: fn(&[u8]), input: &[u8]) -> Option<String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| run(input)));
    outcome.err().map(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[test]
fn every_kept_input_and_found_crash_is_handled() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target.name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{} is empty: run `make fuzz-seeds` (and fuzz it) to fill it",
            target.name
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(target.name));
        for file in corpus.iter().chain(&regressions) {
            let bytes = fs::read(file).expect("reading a kept input");
            let started = Instant::now();
            if let Some(message) = panic_of(target.run, &bytes) {
                failures.push(format!("{}: {message}", file.display()));
            }
            let took = started.elapsed();
            if took > HANG {
                failures.push(format!("{}: ran {took:?}, past {HANG:?}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_target_has_seeds_and_they_are_handled() {
    let seeds = seeds::all();
    for target in TARGETS {
        assert!(
            seeds.iter().any(|(name, _)| *name == target.name),
            "no seed for {}",
            target.name
        );
    }
    for (name, input) in &seeds {
        let target = target(name).expect("a seed names a target");
        assert_eq!(panic_of(target.run, input), None, "a seed of {name}");
    }
}

#[test]
fn the_request_seeds_drive_the_job_through_its_life() {
    use lgaf_coordinator::JobPhase;
    let finished = seeds::finished_session();
    assert_eq!(finished.job.phase(), &JobPhase::Finished);
    assert_eq!(finished.job.last_commit().map(|c| c.step), Some(8));

    let recovered = seeds::session_with_a_lost_worker();
    assert_eq!(recovered.job.phase(), &JobPhase::Finished);
    let generation = recovered.job.generation().expect("a generation formed");
    assert_eq!((generation.number, generation.members.len()), (2, 1));

    // What the fuzzer starts from is these sessions' recorded bytes: replayed, they make
    // the same jobs.
    for session in [finished, recovered] {
        let replayed = lgaf_fuzzing::requests::replay(session.input());
        assert_eq!(replayed.job_json(), session.job_json());
    }
}
