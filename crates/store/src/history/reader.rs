//! [`read_history`]: a run's segments read back and merged into one [`History`].
//!
//! Segments are merged in the order their names sort (the order they were written). A
//! part-0 segment drops the steps after its `resumed_from_step` that earlier segments
//! recorded: its process trained them again. Lines that do not parse are skipped and
//! reported as [`Problem`]s, so a torn tail or a damaged object costs its own lines only.

use std::fmt;

use futures::{StreamExt, TryStreamExt};

use super::record::{Event, HistoryRecord, Line, SegmentHeader, Source, StepRecord, Time};
use super::{HistoryError, SegmentName, MAX_SEGMENT_BYTES};
use crate::run::RunStore;
use crate::store::Listed;

/// Segments downloaded at once.
const READ_CONCURRENCY: usize = 8;

/// A line (or an object) of the history that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The store key of the segment.
    pub key: String,
    /// The 1-based line, or `None` for a problem with the whole object (its name).
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.key, self.reason),
            None => write!(f, "{}: {}", self.key, self.reason),
        }
    }
}

/// One segment as read.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSummary {
    pub key: String,
    pub source: Source,
    pub generation: u64,
    pub part: u32,
    /// Its header, unless its first line is not one (then it drops no steps).
    pub header: Option<SegmentHeader>,
    /// Lines that parsed, the header included.
    pub lines: usize,
    pub bytes: u64,
}

/// An event and who recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedEvent {
    pub source: Source,
    pub event: Event,
}

/// A run's history, merged.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    pub run_id: String,
    /// The store's URL.
    pub url: String,
    /// In the order they were merged (written).
    pub segments: Vec<SegmentSummary>,
    /// Strictly increasing by step; a step trained again after a resume appears once, as
    /// trained last.
    pub steps: Vec<StepRecord>,
    /// In time order (records of equal time in the order they were written).
    pub events: Vec<SourcedEvent>,
    /// What was skipped, in the order met.
    pub problems: Vec<Problem>,
}

impl History {
    /// The earliest time in the history: the first segment's start, or else the first
    /// record's.
    pub fn started(&self) -> Option<Time> {
        let headers = self
            .segments
            .iter()
            .filter_map(|s| s.header.as_ref().map(|h| h.started));
        let records = self
            .steps
            .first()
            .map(|s| s.time)
            .into_iter()
            .chain(self.events.first().map(|e| e.event.time()));
        headers.chain(records).min()
    }

    /// The latest time of any record.
    pub fn ended(&self) -> Option<Time> {
        let step = self.steps.last().map(|s| s.time);
        let event = self.events.last().map(|e| e.event.time());
        step.into_iter().chain(event).max()
    }
}

/// Reads every segment of the run's history and merges them (see the module docs).
/// [`HistoryError::NoRun`] if the store holds nothing of the run,
/// [`HistoryError::NoHistory`] if the run has no segment yet; a segment that cannot be read
/// is an error naming its key. Lines that do not parse are [`History::problems`].
pub async fn read_history(run: &RunStore) -> Result<History, HistoryError> {
    let store = run.store();
    let prefix = run.history_prefix();
    let listed = store.list(&prefix).await?;
    if listed.is_empty() {
        let anything = store.list(&run.run_prefix()).await?;
        let (url, run_id) = (store.url().to_string(), run.run_id().to_string());
        return Err(if anything.is_empty() {
            HistoryError::NoRun { url, run_id }
        } else {
            HistoryError::NoHistory {
                url,
                run_id,
                prefix,
            }
        });
    }
    let mut problems = Vec::new();
    let mut named: Vec<(SegmentName, Listed)> = Vec::new();
    for object in listed {
        let name = object.key.rsplit('/').next().unwrap_or_default();
        let nested = object
            .key
            .strip_prefix(&prefix)
            .map(|r| r.matches('/').count())
            != Some(1);
        match SegmentName::parse(name) {
            Ok(parsed) if !nested => named.push((parsed, object)),
            Ok(_) => problems.push(Problem {
                key: object.key.clone(),
                line: None,
                reason: "a segment name in a sub-folder of the history; skipped".into(),
            }),
            Err(reason) => problems.push(Problem {
                key: object.key.clone(),
                line: None,
                reason: format!("not a history segment ({reason}); skipped"),
            }),
        }
    }
    named.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)));
    let bodies: Vec<_> = futures::stream::iter(&named)
        .map(|(_, object)| store.get_at_most(&object.key, "history segment", MAX_SEGMENT_BYTES))
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut merge = Merge::default();
    for ((name, object), body) in named.iter().zip(bodies) {
        let parsed = parse_segment(&object.key, name, &body, &mut problems);
        merge.add(parsed, &mut problems);
    }
    // Stable: events of one time keep the order they were written in.
    merge.events.sort_by_key(|e| e.event.time());
    Ok(History {
        run_id: run.run_id().to_string(),
        url: store.url().to_string(),
        segments: merge.segments,
        steps: merge.steps,
        events: merge.events,
        problems,
    })
}

/// A segment's records that parsed, with their line numbers.
struct ParsedSegment {
    summary: SegmentSummary,
    records: Vec<(usize, HistoryRecord)>,
}

/// Parses the lines of one segment; the ones that fail go to `problems`.
fn parse_segment(
    key: &str,
    name: &SegmentName,
    body: &[u8],
    problems: &mut Vec<Problem>,
) -> ParsedSegment {
    let mut problem = |line: usize, reason: String| {
        problems.push(Problem {
            key: key.to_string(),
            line: Some(line),
            reason,
        })
    };
    let mut header = None;
    let mut records = Vec::new();
    let mut lines = 0;
    let pieces: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let count = pieces.len();
    for (index, piece) in pieces.into_iter().enumerate() {
        let number = index + 1;
        if piece.iter().all(u8::is_ascii_whitespace) {
            // The empty piece after the last newline, or a blank line: nothing lost.
            continue;
        }
        let line = match serde_json::from_slice::<Line>(piece) {
            Ok(line) => line,
            Err(e) => {
                let torn = if number == count {
                    " (the last line, without its newline: a torn tail)"
                } else {
                    ""
                };
                problem(number, format!("skipped{torn}: {e}"));
                continue;
            }
        };
        lines += 1;
        match line.into_record() {
            Ok(record) if number == 1 => {
                problem(
                    number,
                    "the segment does not start with its header; it drops no earlier steps".into(),
                );
                records.push((number, record));
            }
            Ok(record) => records.push((number, record)),
            Err(found) if number == 1 => {
                let named = (found.source, found.generation, found.part);
                if named != (name.source, name.generation, name.part) {
                    problem(
                        number,
                        format!(
                            "the header says source {}, generation {}, part {}, but the name \
                             says {}, {}, {}; merged by the name",
                            found.source,
                            found.generation,
                            found.part,
                            name.source,
                            name.generation,
                            name.part
                        ),
                    );
                }
                header = Some(found);
            }
            Err(_) => problem(number, "a second segment header; skipped".into()),
        }
    }
    ParsedSegment {
        summary: SegmentSummary {
            key: key.to_string(),
            source: name.source,
            generation: name.generation,
            part: name.part,
            header,
            lines,
            bytes: body.len() as u64,
        },
        records,
    }
}

#[derive(Default)]
struct Merge {
    segments: Vec<SegmentSummary>,
    steps: Vec<StepRecord>,
    events: Vec<SourcedEvent>,
}

impl Merge {
    fn add(&mut self, segment: ParsedSegment, problems: &mut Vec<Problem>) {
        let ParsedSegment { summary, records } = segment;
        if let Some(header) = summary.header.as_ref().filter(|h| h.part == 0) {
            let keep = self
                .steps
                .partition_point(|s| s.step <= header.resumed_from_step);
            self.steps.truncate(keep);
        }
        for (line, record) in records {
            match record {
                HistoryRecord::Step(step) => {
                    if let Some(last) = self.steps.last().filter(|l| l.step >= step.step) {
                        // Not written by a writer that keeps to its contract (steps grow
                        // within a process; a resume starts a part-0 segment). The later
                        // record wins, as a resume's would, so steps stay unique.
                        problems.push(Problem {
                            key: summary.key.clone(),
                            line: Some(line),
                            reason: format!(
                                "step {} comes after step {} without a resume before it; it \
                                 replaces the earlier records from step {} on",
                                step.step, last.step, step.step
                            ),
                        });
                        let keep = self.steps.partition_point(|s| s.step < step.step);
                        self.steps.truncate(keep);
                    }
                    self.steps.push(step);
                }
                HistoryRecord::Event(event) => self.events.push(SourcedEvent {
                    source: summary.source,
                    event,
                }),
            }
        }
        self.segments.push(summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::record::{now, Recovery};

    fn step_line(step: u64, loss: f64) -> String {
        let record = StepRecord {
            step,
            epoch: 0,
            total_steps: 100,
            loss,
            lr: 0.1,
            samples_per_sec: 100.0,
            step_seconds: 0.5,
            data_wait_seconds: 0.1,
            loss_scale: None,
            skipped: false,
            gamma_local: None,
            gamma_global: None,
            world_size: 1,
            generation: 0,
            time: now(),
        };
        Line::from(HistoryRecord::Step(record)).to_json()
    }

    fn header_line(part: u32, resumed_from_step: u64) -> String {
        Line::Segment(SegmentHeader {
            source: Source::Rank0,
            generation: 0,
            resumed_from_step,
            part,
            started: now(),
        })
        .to_json()
    }

    fn name(started_unix_ms: u64, part: u32) -> SegmentName {
        SegmentName {
            generation: 0,
            started_unix_ms,
            source: Source::Rank0,
            part,
        }
    }

    fn parse(lines: &[String], name: &SegmentName, problems: &mut Vec<Problem>) -> ParsedSegment {
        let body = lines.join("\n") + "\n";
        parse_segment(&name.file_name(), name, body.as_bytes(), problems)
    }

    #[test]
    fn a_resume_drops_the_redone_steps_and_a_roll_over_drops_none() {
        let mut problems = Vec::new();
        let mut merge = Merge::default();
        // Process 1: steps 1..=3 in part 0, 4..=7 in part 1; killed after 7, its last
        // checkpoint at 4.
        let mut part0 = vec![header_line(0, 0)];
        part0.extend((1..=3).map(|s| step_line(s, 1.0)));
        let mut part1 = vec![header_line(1, 0)];
        part1.extend((4..=7).map(|s| step_line(s, 1.0)));
        // Process 2 resumed from 4 and trains 5..=9 again.
        let mut resumed = vec![header_line(0, 4)];
        resumed.extend((5..=9).map(|s| step_line(s, 2.0)));
        for (lines, n) in [
            (part0, name(1, 0)),
            (part1, name(1, 1)),
            (resumed, name(2, 0)),
        ] {
            let parsed = parse(&lines, &n, &mut problems);
            merge.add(parsed, &mut problems);
        }
        assert!(problems.is_empty(), "{problems:?}");
        let steps: Vec<u64> = merge.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, (1..=9).collect::<Vec<_>>());
        let losses: Vec<f64> = merge.steps.iter().map(|s| s.loss).collect();
        assert_eq!(losses, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn torn_and_damaged_lines_are_problems_and_the_rest_is_kept() {
        let mut problems = Vec::new();
        let recovery = Line::from(HistoryRecord::Event(Event::Recovery(Recovery {
            generation: 2,
            seconds: 3.5,
            time: now(),
        })))
        .to_json();
        let torn = step_line(4, 1.0);
        let body = [
            header_line(0, 0),
            step_line(1, 1.0),
            "{\"kind\":\"step\",\"step\":2}".to_string(),
            step_line(3, 1.0),
            recovery,
            torn[..torn.len() / 2].to_string(),
        ]
        .join("\n");
        let n = name(1, 0);
        let parsed = parse_segment(&n.file_name(), &n, body.as_bytes(), &mut problems);
        assert_eq!(parsed.records.len(), 3);
        assert_eq!(parsed.summary.lines, 4);
        let at: Vec<Option<usize>> = problems.iter().map(|p| p.line).collect();
        assert_eq!(at, [Some(3), Some(6)]);
        assert!(
            problems[0].reason.contains("missing field `epoch`"),
            "{problems:?}"
        );
        assert!(problems[1].reason.contains("torn tail"), "{problems:?}");
        assert_eq!(problems[1].key, n.file_name());
    }

    #[test]
    fn a_segment_without_its_header_is_kept_and_named() {
        let mut problems = Vec::new();
        let mut merge = Merge::default();
        let first = parse(
            &[header_line(0, 0), step_line(1, 1.0), step_line(2, 1.0)],
            &name(1, 0),
            &mut problems,
        );
        merge.add(first, &mut problems);
        // No header, and a step going back: the later record wins, as a resume's would.
        let headless = parse(
            &[step_line(2, 5.0), step_line(3, 5.0)],
            &name(2, 0),
            &mut problems,
        );
        merge.add(headless, &mut problems);
        let steps: Vec<(u64, f64)> = merge.steps.iter().map(|s| (s.step, s.loss)).collect();
        assert_eq!(steps, [(1, 1.0), (2, 5.0), (3, 5.0)]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0]
            .reason
            .contains("does not start with its header"));
        assert!(problems[1].reason.contains("step 2 comes after step 2"));
    }
}
