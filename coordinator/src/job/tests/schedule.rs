//! The schedule arithmetic, and a first Join whose facts give no schedule.

use super::*;

#[test]
fn schedule_math() {
    let f = Facts::from(&facts());
    let s = Schedule::new(&f, 3, 0).unwrap();
    assert_eq!((s.steps_per_epoch, s.total_steps), (10, 30));
    // Uneven: 1001 / 2 = 500 per rank, / 32 = 15.
    assert_eq!(Schedule::new(&f, 2, 0).unwrap().steps_per_epoch, 15);
    // 1001 / 1 / 32 = 31.
    assert_eq!(Schedule::new(&f, 1, 0).unwrap().total_steps, 93);
    // Caps: the config's max_steps and the CLI's, whichever is smaller.
    let capped = Facts { max_steps: 25, ..f };
    assert_eq!(Schedule::new(&capped, 3, 0).unwrap().total_steps, 25);
    assert_eq!(Schedule::new(&capped, 3, 12).unwrap().total_steps, 12);
    assert_eq!(Schedule::new(&f, 3, 100).unwrap().total_steps, 30);
    // Fewer samples per rank than one batch.
    let small = Facts {
        num_samples: 63,
        ..f
    };
    let e = Schedule::new(&small, 2, 0).unwrap_err();
    assert!(
        e.to_string()
            .contains("31 per rank, fewer than one batch of 32"),
        "{e}"
    );
    assert_eq!(Schedule::new(&small, 1, 0).unwrap().steps_per_epoch, 1);
    let huge = Facts {
        epochs: u64::MAX,
        ..f
    };
    assert!(Schedule::new(&huge, 1, 0)
        .unwrap_err()
        .to_string()
        .contains("overflows"));
}

#[test]
fn an_impossible_schedule_fails_the_job_at_the_first_join() {
    let mut job = job(4);
    let a = register(&mut job, None, 1);
    let mut f = facts();
    f.num_samples = 100; // 25 per rank < 32
    let e = job.join(&join_req(&a, f), 2).unwrap_err();
    assert!(
        matches!(&e, JobError::FailedPrecondition(m) if m.contains("no training steps")),
        "{e}"
    );
    assert!(matches!(job.phase(), JobPhase::Failed { error } if error.contains("25 per rank")));
    assert!(job
        .take_effects()
        .iter()
        .any(|e| matches!(e, Effect::JobEnded(JobPhase::Failed { .. }))));
}
