//! The history of a run in the store: every training step (loss, learning rate,
//! throughput, ...) and every event (generations, lost workers, checkpoints,
//! evaluations, recoveries), for reports and for looking back at what a run did.
//!
//! Object stores cannot append, so the history is written as **segments** under
//! `runs/<run_id>/history/` ([`crate::RunStore::history_prefix`]). A writer
//! ([`HistoryWriter`]; one per process: the coordinator, or rank 0 / `lgaf train`) starts a
//! new segment each time its process starts or resumes, replaces it whole on every flush,
//! and rolls over to a new part after [`DEFAULT_MAX_SEGMENT_LINES`] lines so that a flush
//! stays small. A segment is JSON Lines: its header ([`SegmentHeader`]) first, then
//! [`StepRecord`]s and [`Event`]s (see `record`).
//!
//! A segment is named
//!
//! ```text
//! <started_unix_ms:015>-<generation:06>-<source>-<part:04>.jsonl
//! e.g. 001717243200123-000003-rank0-0000.jsonl
//! ```
//!
//! `started_unix_ms` is when the writing process started its history (the same in all its
//! parts), `generation` the coordinated generation it wrote in (0 for the coordinator and a
//! single-process run) and `part` counts its roll-overs. So the names sort in the order the
//! segments were started, and the reader merges them in that order: the key order of a
//! listing. The start time leads, not the generation: a restarted coordinator numbers its
//! generations from 1 again. Processes of one run start seconds apart at least (a
//! generation forms after its predecessor is declared lost), so clocks kept in step by NTP
//! order them correctly.
//!
//! Reading ([`read_history`]) merges the segments: a part-0 segment whose process resumed
//! from step S drops the steps after S that earlier segments recorded, because they were
//! trained again after the resume. The steps come out strictly increasing, each once; events
//! come out in time order. A line that does not parse (a torn tail, a damaged object) is
//! skipped and reported as a [`Problem`] with its key and line, never an error that loses
//! the rest.
//!
//! Files: `record` (the line types), `writer` ([`HistoryWriter`]), `reader`
//! ([`read_history`] and the merge).

mod reader;
mod record;
mod writer;

use crate::error::StoreError;

pub use reader::{read_history, History, Problem, SegmentSummary, SourcedEvent};
pub use record::{
    now, CheckpointCommitted, EvalSet, Evaluation, Event, GenerationEnded, GenerationFormed,
    HistoryRecord, Outcome, Recovery, RunFinished, SegmentHeader, Source, StepRecord, TarAtFar,
    Time, WorkerLost, WorkerRegistered,
};
pub use writer::{HistoryWriter, WriterOptions, DEFAULT_FLUSH_EVERY, DEFAULT_MAX_SEGMENT_LINES};

/// The largest segment read: one of [`DEFAULT_MAX_SEGMENT_LINES`] lines is about a
/// megabyte, so anything near this is not a segment and is refused by its size.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Errors of writing or reading a history. Each names the run and the store, or the
/// object, it is about.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "there is no run `{run_id}` in {url} (nothing under `runs/{run_id}/`): check the \
         store and the run id (`lgaf ckpt ls` lists a run's checkpoints)"
    )]
    NoRun { url: String, run_id: String },

    #[error(
        "run `{run_id}` in {url} has no history yet (nothing under `{prefix}/`): its \
         processes write it as they train, so a run started by an older version, or one that \
         has not trained a step, has none"
    )]
    NoHistory {
        url: String,
        run_id: String,
        prefix: String,
    },

    #[error("the history uploader stopped before `{key}` was written")]
    UploaderGone { key: String },

    #[error("waiting for the history of run `{run_id}` failed: {reason}")]
    Task { run_id: String, reason: String },
}

/// What a segment's name says (see the module docs for the layout). Ordered as the names
/// sort: the order the segments were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SegmentName {
    pub started_unix_ms: u64,
    pub generation: u64,
    pub source: Source,
    pub part: u32,
}

impl SegmentName {
    /// The object name (the last path segment of its key).
    pub fn file_name(&self) -> String {
        format!(
            "{:015}-{:06}-{}-{:04}.jsonl",
            self.started_unix_ms, self.generation, self.source, self.part
        )
    }

    /// Parses a name written by [`SegmentName::file_name`]; the error says what is wrong.
    pub fn parse(name: &str) -> Result<Self, String> {
        let expected = "expected <started_unix_ms>-<generation>-<source>-<part>.jsonl";
        let stem = name
            .strip_suffix(".jsonl")
            .ok_or_else(|| format!("not a .jsonl file; {expected}"))?;
        let fields: Vec<&str> = stem.split('-').collect();
        let [started, generation, source, part] = fields[..] else {
            return Err(format!("{} `-`-separated fields; {expected}", fields.len()));
        };
        let number = |field: &str, what: &str| {
            if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{what} `{field}` is not a number; {expected}"));
            }
            field
                .parse::<u64>()
                .map_err(|e| format!("{what} `{field}`: {e}"))
        };
        let source = Source::parse(source).ok_or_else(|| {
            format!("source `{source}` is neither `coordinator` nor `rank0`; {expected}")
        })?;
        let part = number(part, "part")?;
        Ok(Self {
            generation: number(generation, "generation")?,
            started_unix_ms: number(started, "start time")?,
            source,
            part: u32::try_from(part).map_err(|_| format!("part {part} is too large"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_in_writing_order() {
        let name = |generation, started_unix_ms, source, part| SegmentName {
            generation,
            started_unix_ms,
            source,
            part,
        };
        // A coordinator restarted after generation 2 numbers its next generation 1: the
        // start time orders them.
        let written = [
            name(0, 1_717_243_200_123, Source::Coordinator, 0),
            name(0, 1_717_243_200_123, Source::Coordinator, 1),
            name(1, 1_717_243_201_000, Source::Rank0, 0),
            name(1, 1_717_243_201_000, Source::Rank0, 1),
            name(1, 1_717_243_201_000, Source::Rank0, 12),
            name(2, 1_717_243_260_000, Source::Rank0, 0),
            name(0, 1_717_243_300_000, Source::Coordinator, 0),
            name(1, 1_717_243_301_000, Source::Rank0, 0),
        ];
        assert_eq!(
            written[2].file_name(),
            "001717243201000-000001-rank0-0000.jsonl"
        );
        for n in written {
            assert_eq!(SegmentName::parse(&n.file_name()), Ok(n));
        }
        let mut by_key: Vec<String> = written.iter().map(|n| n.file_name()).collect();
        by_key.sort();
        let mut by_order = written;
        by_order.sort();
        assert_eq!(by_order, written);
        assert_eq!(
            by_key,
            written.iter().map(|n| n.file_name()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn foreign_names_are_refused_with_the_reason() {
        for (bad, why) in [
            ("notes.txt", "not a .jsonl"),
            ("0017-000000-rank0.jsonl", "3 `-`-separated"),
            ("0017-000000-rank1-0000.jsonl", "source `rank1`"),
            ("0017-00000x-rank0-0000.jsonl", "generation `00000x`"),
            ("0017-000000-rank0-9999999999.jsonl", "too large"),
        ] {
            let e = SegmentName::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
