//! The TCP backend across real OS processes on loopback: each rank is a `collective-peer`
//! process. Peers bind port 0 and print it; the test hands every peer the full list on stdin,
//! so there is no port race.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use lgaf_collective::tcp::{TcpGroup, TcpOptions};
use lgaf_collective::{CollectiveError, Communicator, ReduceBuf, ReduceOp};

const PEER: &str = env!("CARGO_BIN_EXE_collective-peer");
/// Op timeout of the failure tests.
const OP_TIMEOUT_MS: u64 = 2000;
/// Slack on top of the op timeout for detection, propagation and a loaded machine.
const MARGIN: Duration = Duration::from_secs(4);
const START: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Outcome {
    Ok(String),
    Err {
        kind: String,
        peer: Option<usize>,
        line: String,
    },
    Fail(String),
}

/// W peer processes, killed on drop whatever happens.
struct Group {
    children: Vec<Child>,
    lines: Receiver<(usize, String)>,
    /// Lines received but not yet consumed, per rank.
    pending: Vec<Vec<String>>,
    /// Everything every rank printed, for failure messages.
    log: Vec<String>,
}

impl Group {
    fn spawn(world: usize, case: &str, extra: impl Fn(usize) -> Vec<String>) -> Self {
        let (tx, lines) = mpsc::channel();
        let mut children = Vec::new();
        for rank in 0..world {
            let mut child = Command::new(PEER)
                .args(["--rank", &rank.to_string(), "--case", case])
                .args(extra(rank))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn collective-peer");
            let out = child.stdout.take().unwrap();
            let err = child.stderr.take().unwrap();
            for (stream, prefix) in [
                (Box::new(out) as Box<dyn Read + Send>, ""),
                (Box::new(err), "stderr: "),
            ] {
                let tx = tx.clone();
                thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if tx.send((rank, format!("{prefix}{line}"))).is_err() {
                            break;
                        }
                    }
                });
            }
            children.push(child);
        }
        let mut group = Self {
            children,
            lines,
            pending: vec![Vec::new(); world],
            log: Vec::new(),
        };
        let deadline = Instant::now() + START;
        let ports: Vec<String> = (0..world)
            .map(|r| {
                let line = group.wait_line(r, &["PORT "], deadline);
                format!("127.0.0.1:{}", line.trim_start_matches("PORT "))
            })
            .collect();
        let list = ports.join(",");
        for child in &mut group.children {
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{list}").expect("hand the peer list over");
        }
        group
    }

    /// The first line of `rank` starting with one of `prefixes`; panics at `deadline`.
    fn wait_line(&mut self, rank: usize, prefixes: &[&str], deadline: Instant) -> String {
        loop {
            if let Some(i) = self.pending[rank]
                .iter()
                .position(|l| prefixes.iter().any(|p| l.starts_with(p)))
            {
                return self.pending[rank].remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((r, line)) => {
                    self.log.push(format!("[{r}] {line}"));
                    self.pending[r].push(line);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "rank {rank} printed no {prefixes:?} in time; output so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    fn outcome(&mut self, rank: usize, deadline: Instant) -> Outcome {
        let line = self.wait_line(rank, &["OK", "ERR ", "FAIL "], deadline);
        if let Some(hash) = line.strip_prefix("OK ") {
            Outcome::Ok(hash.to_owned())
        } else if let Some(rest) = line.strip_prefix("ERR ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default().to_owned();
            let peer = parts
                .next()
                .and_then(|p| p.strip_prefix("peer="))
                .and_then(|p| p.parse().ok());
            Outcome::Err { kind, peer, line }
        } else {
            Outcome::Fail(line)
        }
    }

    /// All ranks succeed with the same hash, which is returned.
    fn all_ok(&mut self, deadline: Instant) -> String {
        let hashes: Vec<String> = (0..self.children.len())
            .map(|r| match self.outcome(r, deadline) {
                Outcome::Ok(h) => h,
                Outcome::Fail(what) => panic!("rank {r} got a wrong result: {what}"),
                other => panic!("rank {r}: {other:?}\n{}", self.log.join("\n")),
            })
            .collect();
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "ranks disagree on the results: {hashes:?}"
        );
        hashes[0].clone()
    }

    /// Waits for `rank`'s process to end; false if it is still running at `deadline`.
    fn exited_by(&mut self, rank: usize, deadline: Instant) -> bool {
        loop {
            if self.children[rank].try_wait().expect("try_wait").is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts every rank except `spared` ends on its own, then kills anything left.
    fn assert_all_exit(&mut self, spared: Option<usize>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for r in 0..self.children.len() {
            if Some(r) != spared {
                assert!(
                    self.exited_by(r, deadline),
                    "rank {r} is still running after its outcome"
                );
            }
        }
        self.kill_all();
    }

    fn kill(&mut self, rank: usize) {
        let _ = self.children[rank].kill();
        let _ = self.children[rank].wait();
    }

    fn signal(&self, rank: usize, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.children[rank].id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    fn kill_all(&mut self) {
        for r in 0..self.children.len() {
            self.kill(r);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lgaf-tcp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run_ops(world: usize, name: &str) -> String {
    let dir = scratch_dir(name);
    let d = dir.display().to_string();
    let mut group = Group::spawn(world, "ops", |_| args(&["--dir", &d]));
    let hash = group.all_ok(Instant::now() + Duration::from_secs(120));
    group.assert_all_exit(None);
    let _ = std::fs::remove_dir_all(&dir);
    hash
}

/// Every op, dtype and reduction at odd sizes (ring and direct paths), all_gather, broadcast
/// from every root, barrier; results checked in each process and equal to the bit on every
/// rank; a second run of the same world size reproduces them.
#[test]
fn every_operation_on_one_to_four_ranks() {
    let mut hashes = Vec::new();
    for world in 1..=4 {
        hashes.push(run_ops(world, &format!("ops{world}")));
    }
    assert_eq!(
        run_ops(3, "ops3-again"),
        hashes[2],
        "a rerun gave other bits"
    );
}

fn loop_group(world: usize, victim: usize, sleep_ms: u64) -> Group {
    let mut group = Group::spawn(world, "loop", |_| {
        args(&[
            "--op-timeout-ms",
            &OP_TIMEOUT_MS.to_string(),
            "--iters",
            "1000000",
            "--victim",
            &victim.to_string(),
            "--sleep-ms",
            &sleep_ms.to_string(),
        ])
    });
    let deadline = Instant::now() + START;
    for r in 0..world {
        group.wait_line(r, &["READY"], deadline);
    }
    group
}

/// The survivors fail with `kind` naming the victim within the op timeout plus a margin.
fn expect_blamed(group: &mut Group, victim: usize, kind: &str, since: Instant) {
    let deadline = since + Duration::from_millis(OP_TIMEOUT_MS) + MARGIN;
    for r in (0..group.children.len()).filter(|&r| r != victim) {
        let outcome = group.outcome(r, deadline);
        eprintln!("rank {r} after {:?}: {outcome:?}", since.elapsed());
        match outcome {
            Outcome::Err { kind: k, peer, .. } if k == kind && peer == Some(victim) => {}
            other => panic!("rank {r}: expected {kind} naming rank {victim}, got {other:?}"),
        }
    }
}

/// A rank killed mid-run: every other rank reports an I/O error naming it, promptly, and ends.
#[test]
fn dead_peer_is_named_and_everyone_ends() {
    for (world, victim) in [(2, 0), (4, 2)] {
        let mut group = loop_group(world, victim, 0);
        thread::sleep(Duration::from_millis(200));
        group.kill(victim);
        let killed = Instant::now();
        expect_blamed(&mut group, victim, "Io", killed);
        group.assert_all_exit(Some(victim));
    }
}

/// A rank frozen with SIGSTOP: the others report a timeout naming it, not a hang, and end.
#[test]
fn frozen_peer_times_out_and_is_named() {
    for (world, victim) in [(3, 1), (4, 3)] {
        let mut group = loop_group(world, victim, 0);
        thread::sleep(Duration::from_millis(200));
        group.signal(victim, "-STOP");
        let stopped = Instant::now();
        expect_blamed(&mut group, victim, "Timeout", stopped);
        group.assert_all_exit(Some(victim));
    }
}

/// A rank that stalls in its own code (never enters the operation) is named by the others;
/// when it comes back, the failed group gives it an error too instead of a hang.
#[test]
fn stalled_peer_is_named_and_later_fails_itself() {
    let (world, victim) = (3, 0);
    let sleep_ms = 2 * OP_TIMEOUT_MS + 1500;
    let mut group = loop_group(world, victim, sleep_ms);
    let start = Instant::now();
    expect_blamed(&mut group, victim, "Timeout", start);
    let deadline = start + Duration::from_millis(sleep_ms) + MARGIN;
    match group.outcome(victim, deadline) {
        Outcome::Err { line, .. } => eprintln!("the stalled rank, awake: {line}"),
        other => panic!("the stalled rank should fail after waking: {other:?}"),
    }
    group.assert_all_exit(None);
}

/// One rank calls another length or another operation: the ranks report a mismatch (or the
/// broken connection it causes), none hangs and none succeeds.
#[test]
fn disagreeing_ranks_get_a_mismatch() {
    let (world, victim) = (3, 1);
    for variant in ["small", "large", "kind"] {
        let mut group = Group::spawn(world, "mismatch", |_| {
            args(&[
                "--op-timeout-ms",
                &OP_TIMEOUT_MS.to_string(),
                "--victim",
                &victim.to_string(),
                "--variant",
                variant,
            ])
        });
        let deadline = Instant::now() + START;
        let outcomes: Vec<Outcome> = (0..world).map(|r| group.outcome(r, deadline)).collect();
        eprintln!("{variant}: {outcomes:#?}");
        let mut involved = false;
        for (r, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Outcome::Err { kind, peer, line } if kind == "Mismatch" => {
                    involved |= r == victim
                        || *peer == Some(victim)
                        || line.contains(&format!("seen by rank {victim}"));
                }
                Outcome::Err { kind, .. } if kind == "Io" => {}
                other => panic!("{variant}: rank {r}: {other:?}"),
            }
        }
        assert!(
            involved,
            "{variant}: no mismatch involves rank {victim}: {outcomes:?}"
        );
        group.assert_all_exit(None);
    }
}

/// A worker of another generation (other tag) cannot join: everyone fails setup, and the
/// messages say why.
#[test]
fn wrong_group_tag_is_refused_at_connect() {
    let (world, stranger) = (3, 1);
    let mut group = Group::spawn(world, "connect", |r| {
        let tag = if r == stranger { "8" } else { "7" };
        args(&["--tag", tag, "--connect-timeout-ms", "2000"])
    });
    let deadline = Instant::now() + START;
    for r in 0..world {
        match group.outcome(r, deadline) {
            // Rank 2 may find the stranger already gone ("could not reach rank 1"); the
            // stranger and rank 0, which it connects to, always see the tags.
            Outcome::Err { kind, line, .. } if kind == "Setup" => {
                assert!(r == 2 || line.contains("tag"), "rank {r}: {line}");
            }
            other => panic!("rank {r}: expected a setup error, got {other:?}"),
        }
    }
    group.assert_all_exit(None);
}

fn options() -> TcpOptions {
    TcpOptions {
        op_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(10),
        group_tag: 3,
    }
}

/// A world of one works without peers; a misused call fails and leaves the group failed.
#[test]
fn single_rank_and_misuse() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peers = vec![listener.local_addr().unwrap().to_string()];
    let g = TcpGroup::connect(0, &peers, listener, options()).unwrap();
    let mut v = vec![1.5f32, -2.0, 3.0];
    g.all_reduce(ReduceBuf::F32(&mut v), ReduceOp::Sum).unwrap();
    assert_eq!(v, [1.5, -2.0, 3.0]);
    let mut out = [0u8; 3];
    g.all_gather(b"abc", &mut out).unwrap();
    assert_eq!(&out, b"abc");
    g.broadcast(&mut out, 0).unwrap();
    g.barrier().unwrap();

    let err = g.all_gather(b"abc", &mut [0u8; 4]).unwrap_err();
    assert!(matches!(err, CollectiveError::Usage { .. }), "{err}");
    let err = g.barrier().unwrap_err();
    assert!(
        matches!(&err, CollectiveError::Usage { message, .. } if message.contains("unusable")),
        "{err}"
    );
}

/// Strangers that connect first (garbage, silence, an unrelated client) are refused and do not
/// stop the real peer from joining.
#[test]
fn strangers_are_refused_and_the_group_still_forms() {
    let l0 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let peers = vec![
        l0.local_addr().unwrap().to_string(),
        l1.local_addr().unwrap().to_string(),
    ];
    let mut junk = TcpStream::connect(&peers[0]).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n-------------")
        .unwrap();
    let p = peers.clone();
    let rank0 = thread::spawn(move || TcpGroup::connect(0, &p, l0, options()));
    thread::sleep(Duration::from_millis(100));
    let p = peers.clone();
    let rank1 = thread::spawn(move || TcpGroup::connect(1, &p, l1, options()));
    let g0 = rank0.join().unwrap().expect("rank 0 forms the group");
    let g1 = rank1.join().unwrap().expect("rank 1 forms the group");
    let t = thread::spawn(move || {
        let mut v = vec![2i64; 10];
        g1.all_reduce(ReduceBuf::I64(&mut v), ReduceOp::Sum)
            .unwrap();
        v
    });
    let mut v = vec![5i64; 10];
    g0.all_reduce(ReduceBuf::I64(&mut v), ReduceOp::Sum)
        .unwrap();
    assert_eq!(v, vec![7; 10]);
    assert_eq!(t.join().unwrap(), vec![7; 10]);
}

/// The abort handle unblocks an operation waiting on a peer that never comes (the
/// coordinator ended the generation), long before the operation's timeout.
#[test]
fn an_abort_ends_a_blocked_operation_at_once() {
    let listeners: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let mut groups: Vec<TcpGroup> = std::thread::scope(|scope| {
        let joins: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let peers = peers.clone();
                scope.spawn(move || {
                    let mut opts = options();
                    opts.op_timeout = Duration::from_secs(60);
                    TcpGroup::connect(rank, &peers, listener, opts).unwrap()
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    // Rank 1 is alive but never calls: rank 0 waits inside the all-reduce.
    let _rank1 = groups.pop().unwrap();
    let rank0 = groups.pop().unwrap();
    let abort = rank0.abort_handle().unwrap();
    let started = Instant::now();
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        abort.abort();
    });
    let mut v = vec![1.0f32; 1000];
    let err = rank0
        .all_reduce(ReduceBuf::F32(&mut v), ReduceOp::Sum)
        .unwrap_err();
    aborter.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, CollectiveError::Io { .. }), "{err}");
    assert!(
        rank0.barrier().is_err(),
        "the aborted group must stay failed"
    );
}
