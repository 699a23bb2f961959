//! [`HistoryWriter`]: one process's history segments, written in the background.
//!
//! Recording is a serialisation and an append under a mutex; the puts go through a
//! [`BackgroundUploader`] (its own thread and runtime, the machinery checkpoints use), whose
//! replacements of one key land in the order they were handed over. So a training step
//! never waits on the network: only [`HistoryWriter::flush_and_wait`] (at a checkpoint
//! commit, so every step up to it is stored before the manifest is) and the final flush
//! ([`HistoryWriter::finish`], or drop) wait.

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::record::{now, HistoryRecord, Line, SegmentHeader, Source, Time};
use super::{HistoryError, SegmentName};
use crate::error::StoreError;
use crate::run::RunStore;
use crate::store::ObjectInfo;
use crate::uploader::BackgroundUploader;

/// Lines (the header included) after which a writer rolls over to a new segment part: a
/// flush rewrites the whole current part, so this bounds a flush to about a megabyte.
pub const DEFAULT_MAX_SEGMENT_LINES: usize = 2000;
/// Step records are flushed at least this often; events at once.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Host memory of history puts in flight before a hand-over waits. Each segment has at
/// most two puts in flight (see `State::submit`), so this is never reached in practice;
/// it only bounds memory if the store hangs.
const MAX_PENDING_BYTES: usize = 256 << 20;

/// When a writer flushes and rolls over.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Step records are flushed once the last flush is this old (events at once).
    pub flush_every: Duration,
    /// Lines per segment part, the header included (at least 2).
    pub max_segment_lines: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            flush_every: DEFAULT_FLUSH_EVERY,
            max_segment_lines: DEFAULT_MAX_SEGMENT_LINES,
        }
    }
}

/// A put's result as the writer keeps it.
type PutResult = Result<ObjectInfo, HistoryError>;

/// One segment part in memory, until it is stored and no longer the current one.
struct Segment {
    key: String,
    part: u32,
    /// The part's lines, each ending in `\n`.
    text: String,
    lines: usize,
    /// Bumped by every line; `stored` is the newest version known to be in the store.
    version: u64,
    stored: u64,
    /// Puts handed over and not yet seen finished, oldest first, with their version.
    in_flight: VecDeque<(u64, std_mpsc::Receiver<Result<ObjectInfo, StoreError>>)>,
}

impl Segment {
    fn new(key: String, header: SegmentHeader) -> Self {
        let mut segment = Self {
            key,
            part: header.part,
            text: String::new(),
            lines: 0,
            version: 0,
            stored: 0,
            in_flight: VecDeque::new(),
        };
        segment.push(&Line::Segment(header).to_json());
        segment
    }

    fn push(&mut self, json: &str) {
        self.text.push_str(json);
        self.text.push('\n');
        self.lines += 1;
        self.version += 1;
    }

    fn dirty(&self) -> bool {
        self.stored < self.version
    }

    /// Whether a put of the current version is already on its way.
    fn current_in_flight(&self) -> bool {
        self.in_flight
            .back()
            .is_some_and(|(v, _)| *v == self.version)
    }
}

struct State {
    /// The current part last; earlier ones stay until their last version is stored.
    segments: Vec<Segment>,
    last_flush: Instant,
}

/// The result of one finished put, for [`State::settle`]: the key, its version, the result.
type Settled = (String, u64, PutResult);

/// What the reply channel of a put gave.
fn received(
    key: &str,
    reply: Result<Result<ObjectInfo, StoreError>, std_mpsc::RecvError>,
) -> PutResult {
    match reply {
        Ok(result) => result.map_err(HistoryError::Store),
        Err(std_mpsc::RecvError) => Err(HistoryError::UploaderGone {
            key: key.to_string(),
        }),
    }
}

impl State {
    fn current(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a writer always has a current part")
    }

    /// Takes in the puts that have finished, without waiting.
    fn reap(&mut self) {
        let mut settled = Vec::new();
        for segment in &mut self.segments {
            while let Some((version, reply)) = segment.in_flight.front() {
                let result = match reply.try_recv() {
                    Ok(result) => received(&segment.key, Ok(result)),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        received(&segment.key, Err(std_mpsc::RecvError))
                    }
                };
                settled.push((segment.key.clone(), *version, result));
                segment.in_flight.pop_front();
            }
        }
        self.settle(&settled);
    }

    /// Records finished puts: a success marks its version stored (a failure was already
    /// logged by the uploader, and the part stays dirty, so the next flush puts it again).
    /// Parts that are no longer current and are fully stored are dropped.
    fn settle(&mut self, settled: &[Settled]) {
        for (key, version, result) in settled {
            if result.is_ok() {
                if let Some(segment) = self.segments.iter_mut().find(|s| s.key == *key) {
                    segment.stored = segment.stored.max(*version);
                }
            }
        }
        let current = self.segments.len() - 1;
        let mut index = 0;
        self.segments.retain(|s| {
            index += 1;
            index - 1 == current || s.dirty() || !s.in_flight.is_empty()
        });
    }

    /// Hands the current version of every dirty part to the uploader. Unless `always`, a
    /// part with two puts in flight is left for a later flush: the second is queued behind
    /// the first, so a slow store does not pile up copies of the same part.
    fn submit(&mut self, uploader: &BackgroundUploader, always: bool) {
        for segment in &mut self.segments {
            if !segment.dirty() || segment.current_in_flight() {
                continue;
            }
            if !always && segment.in_flight.len() >= 2 {
                continue;
            }
            let reply = uploader.submit_replace(&segment.key, Bytes::from(segment.text.clone()));
            segment.in_flight.push_back((segment.version, reply));
        }
        self.last_flush = Instant::now();
    }
}

/// The history of one process (the coordinator, or rank 0 / `lgaf train`) from its start
/// or resume: one segment, rolled over into further parts as it grows. Its methods take
/// `&self` and it is `Send + Sync`, so one writer can be shared (`Arc`) between threads
/// and tasks.
///
/// [`HistoryWriter::record`] never waits on the store. Async code may call it directly;
/// it waits for the store only in [`HistoryWriter::flush_and_wait_async`] (or through
/// `spawn_blocking`), since [`HistoryWriter::flush_and_wait`] blocks its thread.
pub struct HistoryWriter {
    run: RunStore,
    source: Source,
    generation: u64,
    resumed_from_step: u64,
    started: Time,
    options: WriterOptions,
    state: Mutex<State>,
    /// Dropped last (declared last): its drop waits for the puts already handed over.
    uploader: BackgroundUploader,
}

impl HistoryWriter {
    /// Starts the history of a process that resumed from `resumed_from_step` (0 for a
    /// fresh start) in `generation` (0 for a single-process run): a new segment whose
    /// header goes to the store in the background at once. Every step after
    /// `resumed_from_step` that earlier segments of the run recorded counts as redone: the
    /// reader drops those records. Fails only if the upload thread cannot start.
    pub fn start(
        run: RunStore,
        source: Source,
        generation: u64,
        resumed_from_step: u64,
    ) -> Result<Self, HistoryError> {
        Self::with_options(
            run,
            source,
            generation,
            resumed_from_step,
            WriterOptions::default(),
        )
    }

    /// [`HistoryWriter::start`] with other flush and roll-over settings.
    pub fn with_options(
        run: RunStore,
        source: Source,
        generation: u64,
        resumed_from_step: u64,
        options: WriterOptions,
    ) -> Result<Self, HistoryError> {
        let options = WriterOptions {
            max_segment_lines: options.max_segment_lines.max(2),
            ..options
        };
        let uploader = BackgroundUploader::with_max_pending(run.clone(), MAX_PENDING_BYTES)?;
        let writer = Self {
            run,
            source,
            generation,
            resumed_from_step,
            started: now(),
            options,
            state: Mutex::new(State {
                segments: Vec::new(),
                last_flush: Instant::now(),
            }),
            uploader,
        };
        {
            let mut state = writer.lock();
            state.segments.push(writer.part(0));
            state.submit(&writer.uploader, false);
        }
        tracing::debug!(
            run = %writer.run.run_id(),
            key = %writer.segment_key(),
            "history segment started"
        );
        Ok(writer)
    }

    /// A new segment part with its header.
    fn part(&self, part: u32) -> Segment {
        let name = SegmentName {
            generation: self.generation,
            started_unix_ms: u64::try_from(self.started.timestamp_millis()).unwrap_or(0),
            source: self.source,
            part,
        };
        Segment::new(
            self.run.history_key(&name.file_name()),
            SegmentHeader {
                source: self.source,
                generation: self.generation,
                resumed_from_step: self.resumed_from_step,
                part,
                started: self.started,
            },
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines behind (appends are one
        // push_str each), so the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store key of the current segment part.
    pub fn segment_key(&self) -> String {
        self.lock()
            .segments
            .last()
            .map(|s| s.key.clone())
            .unwrap_or_default()
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends a step or an event. Never waits for the store: an event is handed to the
    /// uploader at once, steps once the last flush is older than
    /// [`WriterOptions::flush_every`].
    pub fn record(&self, record: impl Into<HistoryRecord>) {
        let record = record.into();
        let urgent = matches!(record, HistoryRecord::Event(_));
        let json = Line::from(record).to_json();
        let mut state = self.lock();
        state.reap();
        let mut rolled = false;
        if state.current().lines >= self.options.max_segment_lines {
            let next = state.current().part + 1;
            state.segments.push(self.part(next));
            rolled = true;
        }
        state.current().push(&json);
        if urgent || rolled || state.last_flush.elapsed() >= self.options.flush_every {
            state.submit(&self.uploader, false);
        }
    }

    /// Hands what is not stored yet to the uploader, without waiting.
    pub fn flush(&self) {
        let mut state = self.lock();
        state.reap();
        state.submit(&self.uploader, false);
    }

    /// Writes everything recorded so far and waits until the store holds it. The error is
    /// the failed put of a part that is still not stored (it names the key; the next flush
    /// tries that part again). Blocks the calling thread; async code uses
    /// [`HistoryWriter::flush_and_wait_async`].
    pub fn flush_and_wait(&self) -> Result<(), HistoryError> {
        // Wait outside the lock, so that other threads can go on recording meanwhile.
        let waits: Vec<(String, u64, std_mpsc::Receiver<_>)> = {
            let mut state = self.lock();
            state.reap();
            state.submit(&self.uploader, true);
            state
                .segments
                .iter_mut()
                .flat_map(|s| {
                    let key = s.key.clone();
                    s.in_flight
                        .drain(..)
                        .map(move |(version, reply)| (key.clone(), version, reply))
                })
                .collect()
        };
        let settled: Vec<Settled> = waits
            .into_iter()
            .map(|(key, version, reply)| {
                let result = received(&key, reply.recv());
                (key, version, result)
            })
            .collect();
        let mut state = self.lock();
        state.settle(&settled);
        // A later put of the same part that succeeded makes an earlier failure moot.
        let still_dirty = |key: &str| state.segments.iter().any(|s| s.key == key && s.dirty());
        match settled
            .into_iter()
            .find(|(key, _, result)| result.is_err() && still_dirty(key))
        {
            Some((_, _, Err(e))) => Err(e),
            _ => Ok(()),
        }
    }

    /// [`HistoryWriter::flush_and_wait`] for async code: the wait runs on tokio's blocking
    /// pool, so the runtime's threads go on (a runtime must be current).
    pub async fn flush_and_wait_async(self: Arc<Self>) -> Result<(), HistoryError> {
        let run_id = self.run.run_id().to_string();
        tokio::task::spawn_blocking(move || self.flush_and_wait())
            .await
            .map_err(|e| HistoryError::Task {
                run_id,
                reason: e.to_string(),
            })?
    }

    /// The final flush: writes everything and waits for it. Dropping a writer does the
    /// same but can only log a failure.
    pub fn finish(self) -> Result<(), HistoryError> {
        self.flush_and_wait()
        // Drop flushes again, which finds nothing dirty and returns at once.
    }
}

impl Drop for HistoryWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush_and_wait() {
            tracing::warn!(run = %self.run.run_id(), error = %e, "the last history flush failed");
        }
    }
}
