//! The records of a run's history: what one line of a segment holds.
//!
//! Every line is one JSON object tagged by `"kind"`: the segment header first (`segment`),
//! then step records (`step`) and events (`generation_formed`, `worker_lost`, ...). Every
//! record is a typed struct: a missing or mistyped field makes its line a problem for the
//! reader, never a default. Fields are only ever added; a reader ignores fields it does not
//! know, and an unknown kind is a problem naming it.
//!
//! Losses and the like can be NaN or infinite (a diverging run is what a history should
//! show), which JSON numbers cannot hold, so those floats are written as `"NaN"`, `"inf"`
//! or `"-inf"` (see [`float`]).

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

/// A record's time: UTC, written as RFC 3339 (`2024-06-01T12:00:00.123Z`).
pub type Time = DateTime<Utc>;

/// The time now, to the millisecond (the precision the segment names and the report use).
pub fn now() -> Time {
    Utc::now().trunc_subsecs(3)
}

/// Who writes a segment: the coordinator of a job, or rank 0 (also the single process of
/// `lgaf train`). Written as `coordinator` / `rank0`, in records and segment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Coordinator,
    Rank0,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Coordinator, Source::Rank0];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Coordinator => "coordinator",
            Source::Rank0 => "rank0",
        }
    }

    /// The source a segment name spells, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of every segment: who wrote it and where its process started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub source: Source,
    /// The generation of a coordinated run (only grows across restarts); 0 for a
    /// single-process run.
    pub generation: u64,
    /// The step the writing process started from. In part 0 it also means: every step
    /// after it that earlier segments recorded is redone, so the reader drops those.
    pub resumed_from_step: u64,
    /// 0 for the segment a process starts with; 1, 2, ... for the segments it rolls over
    /// to when one grows long (those continue part 0 and drop nothing).
    pub part: u32,
    /// When the writing process started its history (the same in every part).
    pub started: Time,
}

/// One training step, as rank 0 saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed after this one (the first step is 1).
    pub step: u64,
    /// The step's epoch, counting from 0 as the trainer does.
    pub epoch: u64,
    pub total_steps: u64,
    #[serde(with = "float")]
    pub loss: f64,
    #[serde(with = "float")]
    pub lr: f64,
    /// Images of the global batch per second of this step.
    #[serde(with = "float")]
    pub samples_per_sec: f64,
    /// The step's wall time, the wait for data included.
    #[serde(with = "float")]
    pub step_seconds: f64,
    /// Time blocked waiting for the batch.
    #[serde(with = "float")]
    pub data_wait_seconds: f64,
    /// The fp16 loss scale, under loss scaling.
    #[serde(default, with = "opt_float")]
    pub loss_scale: Option<f64>,
    /// Whether the update was skipped (non-finite gradients under loss scaling).
    pub skipped: bool,
    /// Mean LGF attention weights over the batch, under `lgf` fusion.
    #[serde(default, with = "opt_float")]
    pub gamma_local: Option<f64>,
    #[serde(default, with = "opt_float")]
    pub gamma_global: Option<f64>,
    pub world_size: u32,
    pub generation: u64,
    pub time: Time,
}

/// TAR at a fixed FAR over the folds, as insightface reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TarAtFar {
    /// The FAR aimed at (1e-3).
    #[serde(with = "float")]
    pub far_target: f64,
    #[serde(with = "float")]
    pub tar: f64,
    #[serde(with = "float")]
    pub tar_std: f64,
    /// The mean FAR reached.
    #[serde(with = "float")]
    pub far: f64,
}

/// The result of one evaluation set: a verification `.bin` (named by its file stem, e.g.
/// `lfw`), or held-out synthetic identities (`held-out`, and one per nuisance factor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSet {
    pub name: String,
    /// The nuisance factor all of the set's pairs share (`pose`, `blur`, ...), if one.
    #[serde(default)]
    pub factor: Option<String>,
    #[serde(default)]
    pub pairs: Option<u64>,
    /// Mean test-fold accuracy (0..1) over the folds.
    #[serde(with = "float")]
    pub accuracy: f64,
    /// Its standard deviation over the folds.
    #[serde(with = "float")]
    pub std: f64,
    /// Mean of the folds' distance thresholds.
    #[serde(with = "float")]
    pub threshold: f64,
    #[serde(default)]
    pub tar_at_far: Option<TarAtFar>,
    /// Mean LGF attention weights on the set's images, under `lgf` fusion.
    #[serde(default, with = "opt_float")]
    pub gamma_local: Option<f64>,
    #[serde(default, with = "opt_float")]
    pub gamma_global: Option<f64>,
}

/// A generation formed: its ranks are about to train from `resume_step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationFormed {
    pub generation: u64,
    pub world_size: u32,
    pub resume_step: u64,
    /// From the survivors' state in memory (live recovery), not a checkpoint.
    #[serde(default)]
    pub live: bool,
    pub time: Time,
}

/// A generation ended (a rank lost, the run finished, the coordinator stopping).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationEnded {
    pub generation: u64,
    pub reason: String,
    pub time: Time,
}

/// A worker registered with the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRegistered {
    pub worker_id: String,
    pub host: String,
    pub time: Time,
}

/// A worker was lost (silent past the deadline, exited, gone from a failed group).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerLost {
    pub worker_id: String,
    /// Its rank in the generation it was lost from; none if it had not joined one.
    #[serde(default)]
    pub rank: Option<u32>,
    pub host: String,
    pub reason: String,
    pub time: Time,
}

/// A checkpoint was committed (its manifest written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointCommitted {
    pub step: u64,
    /// Bytes of all its objects.
    pub bytes: u64,
    /// From the save's start to the commit.
    #[serde(with = "float")]
    pub seconds: f64,
    pub time: Time,
}

/// An evaluation of the model of `step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub step: u64,
    pub sets: Vec<EvalSet>,
    pub time: Time,
}

/// A run recovered from a failure: `generation` formed `seconds` after the failure that
/// ended the one before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub generation: u64,
    #[serde(with = "float")]
    pub seconds: f64,
    pub time: Time,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step was trained.
    Completed,
    /// Stopped on an error.
    Failed,
    /// Stopped on request (a signal, `--max-steps`) before the last step.
    Stopped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
        }
    }
}

/// The run finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    /// The last step trained.
    pub step: u64,
    pub outcome: Outcome,
    /// The error or reason, if any.
    #[serde(default)]
    pub detail: Option<String>,
    pub time: Time,
}

/// Declares [`Event`], the wire enum `Line` with one variant per event besides the header
/// and steps, and the conversions between them, from one list, so they cannot drift apart.
macro_rules! events {
    ($($variant:ident($ty:ident) = $kind:literal),* $(,)?) => {
        /// Something that happened to the run, with its time. Written as one line tagged by
        /// its kind (`generation_formed`, `worker_lost`, ...).
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $($variant($ty),)*
        }

        impl Event {
            pub fn time(&self) -> Time {
                match self {
                    $(Event::$variant(e) => e.time,)*
                }
            }

            /// The kind as written in the line's `"kind"`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Event::$variant(_) => $kind,)*
                }
            }
        }

        $(
            impl From<$ty> for Event {
                fn from(e: $ty) -> Self {
                    Event::$variant(e)
                }
            }

            impl From<$ty> for HistoryRecord {
                fn from(e: $ty) -> Self {
                    HistoryRecord::Event(Event::$variant(e))
                }
            }
        )*

        /// One line of a segment, as written and read.
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub(crate) enum Line {
            #[serde(rename = "segment")]
            Segment(SegmentHeader),
            #[serde(rename = "step")]
            Step(StepRecord),
            $(#[serde(rename = $kind)] $variant($ty),)*
        }

        impl From<HistoryRecord> for Line {
            fn from(record: HistoryRecord) -> Self {
                match record {
                    HistoryRecord::Step(s) => Line::Step(s),
                    $(HistoryRecord::Event(Event::$variant(e)) => Line::$variant(e),)*
                }
            }
        }

        impl Line {
            /// The record of a line that is not a header.
            pub(crate) fn into_record(self) -> Result<HistoryRecord, SegmentHeader> {
                match self {
                    Line::Segment(h) => Err(h),
                    Line::Step(s) => Ok(HistoryRecord::Step(s)),
                    $(Line::$variant(e) => Ok(HistoryRecord::Event(Event::$variant(e))),)*
                }
            }
        }
    };
}

events! {
    GenerationFormed(GenerationFormed) = "generation_formed",
    GenerationEnded(GenerationEnded) = "generation_ended",
    WorkerRegistered(WorkerRegistered) = "worker_registered",
    WorkerLost(WorkerLost) = "worker_lost",
    CheckpointCommitted(CheckpointCommitted) = "checkpoint_committed",
    Evaluation(Evaluation) = "evaluation",
    Recovery(Recovery) = "recovery",
    RunFinished(RunFinished) = "run_finished",
}

/// What a writer records: a step or an event.
#[derive(Clone, Debug, PartialEq)]
pub enum HistoryRecord {
    Step(StepRecord),
    Event(Event),
}

impl From<StepRecord> for HistoryRecord {
    fn from(s: StepRecord) -> Self {
        HistoryRecord::Step(s)
    }
}

impl From<Event> for HistoryRecord {
    fn from(e: Event) -> Self {
        HistoryRecord::Event(e)
    }
}

impl Line {
    /// The line's JSON, without the newline.
    pub(crate) fn to_json(&self) -> String {
        // Every field is a string, an integer, a bool, a time or a float written through
        // `float`, none of which can fail to serialise.
        serde_json::to_string(self).expect("a history line serialises")
    }
}

/// Serde for an `f64` that may be NaN or infinite: finite values are JSON numbers, the
/// others the strings `"NaN"`, `"inf"` and `"-inf"` (serde_json alone writes them as
/// `null`, which then fails to read back as a number).
pub(crate) mod float {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    const EXPECTED: &str = "a number, or \"NaN\", \"inf\" or \"-inf\"";

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f64(*value)
        } else if value.is_nan() {
            s.serialize_str("NaN")
        } else if *value > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(FloatVisitor)
    }

    pub(super) struct FloatVisitor;

    impl Visitor<'_> for FloatVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &EXPECTED)),
            }
        }
    }
}

/// [`float`] for an `Option<f64>`: `null` is `None`.
pub(crate) mod opt_float {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => super::float::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null, a number, or \"NaN\", \"inf\" or \"-inf\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(super::float::FloatVisitor).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> StepRecord {
        StepRecord {
            step,
            epoch: 0,
            total_steps: 10,
            loss,
            lr: 0.1,
            samples_per_sec: 640.0,
            step_seconds: 0.1,
            data_wait_seconds: 0.01,
            loss_scale: None,
            skipped: false,
            gamma_local: Some(0.25),
            gamma_global: None,
            world_size: 1,
            generation: 0,
            time: "2024-06-01T12:00:00.5Z".parse().unwrap(),
        }
    }

    fn round_trip(record: HistoryRecord) -> HistoryRecord {
        let json = Line::from(record).to_json();
        serde_json::from_str::<Line>(&json)
            .unwrap()
            .into_record()
            .unwrap()
    }

    #[test]
    fn steps_round_trip_with_non_finite_floats() {
        for loss in [1.5, f64::INFINITY, f64::NEG_INFINITY] {
            let record = HistoryRecord::Step(step(3, loss));
            assert_eq!(round_trip(record.clone()), record);
        }
        let HistoryRecord::Step(back) = round_trip(step(3, f64::NAN).into()) else {
            panic!("a step comes back a step");
        };
        assert!(back.loss.is_nan());
        let json = Line::from(HistoryRecord::Step(step(3, f64::NAN))).to_json();
        assert!(json.starts_with(r#"{"kind":"step","step":3,"#), "{json}");
        assert!(json.contains(r#""loss":"NaN""#), "{json}");
        assert!(json.contains(r#""gamma_global":null"#), "{json}");
        assert!(
            json.contains(r#""time":"2024-06-01T12:00:00.500Z""#),
            "{json}"
        );
    }

    #[test]
    fn events_round_trip_tagged_by_kind() {
        let time = now();
        let events: Vec<HistoryRecord> = vec![
            GenerationFormed {
                generation: 2,
                world_size: 4,
                resume_step: 100,
                live: false,
                time,
            }
            .into(),
            WorkerLost {
                worker_id: "w-3".into(),
                rank: Some(3),
                host: "node-7".into(),
                reason: "heartbeat deadline passed".into(),
                time,
            }
            .into(),
            Evaluation {
                step: 100,
                sets: vec![EvalSet {
                    name: "lfw".into(),
                    factor: None,
                    pairs: Some(6000),
                    accuracy: 0.99,
                    std: 0.003,
                    threshold: 1.4,
                    tar_at_far: Some(TarAtFar {
                        far_target: 1e-3,
                        tar: 0.97,
                        tar_std: 0.01,
                        far: 0.0009,
                    }),
                    gamma_local: None,
                    gamma_global: None,
                }],
                time,
            }
            .into(),
            RunFinished {
                step: 120,
                outcome: Outcome::Completed,
                detail: None,
                time,
            }
            .into(),
        ];
        for record in events {
            let json = Line::from(record.clone()).to_json();
            let HistoryRecord::Event(event) = &record else {
                unreachable!()
            };
            assert!(
                json.starts_with(&format!(r#"{{"kind":"{}","#, event.kind())),
                "{json}"
            );
            assert_eq!(round_trip(record.clone()), record);
        }
    }

    #[test]
    fn a_missing_or_mistyped_field_is_an_error_naming_it() {
        let missing = r#"{"kind":"checkpoint_committed","step":4,"seconds":1.5,"time":"2024-06-01T12:00:00Z"}"#;
        let e = serde_json::from_str::<Line>(missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `bytes`"), "{e}");
        let mistyped =
            r#"{"kind":"recovery","generation":2,"seconds":"soon","time":"2024-06-01T12:00:00Z"}"#;
        let e = serde_json::from_str::<Line>(mistyped)
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
        let unknown = r#"{"kind":"coffee_break","time":"2024-06-01T12:00:00Z"}"#;
        let e = serde_json::from_str::<Line>(unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("coffee_break"), "{e}");
    }

    #[test]
    fn sources_are_written_as_their_names() {
        assert_eq!(serde_json::to_string(&Source::Rank0).unwrap(), r#""rank0""#);
        assert_eq!(Source::parse("coordinator"), Some(Source::Coordinator));
        assert_eq!(Source::parse("rank1"), None);
    }
}
