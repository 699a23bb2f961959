//! One rank of a TCP collective group, driven by `tests/tcp.rs` and `bench/allreduce.sh`
//! (and usable by hand).
//!
//! Protocol on stdio, so the ports are race-free: the peer binds 127.0.0.1:0 and prints
//! `PORT <port>`; it then reads one line from stdin, the comma-separated `host:port` of every
//! rank, connects and runs `--case`. It ends with `OK <hash>` (a hash of every result, equal
//! on all ranks) or `ERR <kind> peer=<rank> <message>` and exits 0 or 1; a wrong result is
//! `FAIL <what>`, exit 2.
//!
//! Cases: `ops` (every operation, dtype and reduction at odd sizes, checked against values
//! computed locally), `connect` (connect and one barrier), `loop` (all-reduces until an
//! error; `--victim` sleeps `--sleep-ms` in its own code if given), `mismatch` (the victim
//! calls a different operation, see `--variant`), `bench` (25 MB f32 all-reduce throughput).

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lgaf_collective::tcp::{TcpGroup, TcpOptions};
use lgaf_collective::{CollectiveError, Communicator, ReduceBuf, ReduceOp};
use lgaf_splitmix::mix64;

struct Args {
    rank: usize,
    case: String,
    tag: u64,
    op_timeout: Duration,
    connect_timeout: Duration,
    victim: Option<usize>,
    sleep_ms: u64,
    variant: String,
    dir: Option<PathBuf>,
    iters: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rank: usize::MAX,
        case: String::new(),
        tag: 1,
        op_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(20),
        victim: None,
        sleep_ms: 0,
        variant: "small".into(),
        dir: None,
        iters: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--rank" => a.rank = num(value()?)? as usize,
            "--case" => a.case = value()?,
            "--tag" => a.tag = num(value()?)?,
            "--op-timeout-ms" => a.op_timeout = Duration::from_millis(num(value()?)?),
            "--connect-timeout-ms" => a.connect_timeout = Duration::from_millis(num(value()?)?),
            "--victim" => a.victim = Some(num(value()?)? as usize),
            "--sleep-ms" => a.sleep_ms = num(value()?)?,
            "--variant" => a.variant = value()?,
            "--dir" => a.dir = Some(value()?.into()),
            "--iters" => a.iters = num(value()?)? as usize,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.rank == usize::MAX || a.case.is_empty() {
        return Err("usage: collective-peer --rank R --case CASE [options]".into());
    }
    Ok(a)
}

/// Why a case stopped: the group failed (expected in failure tests) or a result was wrong.
enum Stop {
    Collective(CollectiveError),
    Wrong(String),
}

impl From<CollectiveError> for Stop {
    fn from(e: CollectiveError) -> Self {
        Self::Collective(e)
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "{e}");
            return ExitCode::from(64);
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    say(&format!("PORT {port}"));
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .expect("peer list on stdin");
    let peers: Vec<String> = line.trim().split(',').map(str::to_owned).collect();
    let options = TcpOptions {
        op_timeout: args.op_timeout,
        connect_timeout: args.connect_timeout,
        group_tag: args.tag,
    };
    let mut hash = Fnv::new();
    let outcome = TcpGroup::connect(args.rank, &peers, listener, options)
        .map_err(Stop::from)
        .and_then(|group| {
            say("CONNECTED");
            let r = run_case(&args, &group, &mut hash);
            drop(group);
            r
        });
    match outcome {
        Ok(()) => {
            say(&format!("OK {:016x}", hash.0));
            ExitCode::SUCCESS
        }
        Err(Stop::Collective(e)) => {
            let (kind, peer) = describe(&e);
            say(&format!("ERR {kind} peer={peer} {e}"));
            ExitCode::from(1)
        }
        Err(Stop::Wrong(what)) => {
            say(&format!("FAIL {what}"));
            ExitCode::from(2)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn describe(e: &CollectiveError) -> (&'static str, String) {
    match e {
        CollectiveError::Timeout { peer, .. } => ("Timeout", peer.to_string()),
        CollectiveError::Io { peer, .. } => ("Io", peer.to_string()),
        CollectiveError::Mismatch { peer, .. } => ("Mismatch", peer.to_string()),
        CollectiveError::Usage { .. } => ("Usage", "-".into()),
        CollectiveError::Setup { .. } => ("Setup", "-".into()),
        _ => ("Other", "-".into()),
    }
}

fn run_case(args: &Args, group: &TcpGroup, hash: &mut Fnv) -> Result<(), Stop> {
    match args.case.as_str() {
        "ops" => ops(args, group, hash),
        "connect" => Ok(group.barrier()?),
        "loop" => looping(args, group),
        "mismatch" => mismatch(args, group),
        "bench" => bench(args, group, hash),
        other => Err(Stop::Wrong(format!("unknown case {other}"))),
    }
}

/// Deterministic pseudo-random bits of (rank, index, salt): SplitMix64's output function
/// over a linear combination of the three (odd multipliers, so each key changes the input).
fn mix(rank: usize, i: usize, salt: u64) -> u64 {
    mix64(
        (rank as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
            .wrapping_add(salt.wrapping_mul(0x94d0_49bb_1331_11eb)),
    )
}

/// Quarter-integers: any sum over a few ranks is exact, whatever the order.
fn exact(rank: usize, i: usize) -> f64 {
    ((i * 7 + rank * 13) % 1021) as f64 * 0.25 - 64.0
}

/// Irregular values whose sums round, plus NaN, infinity and signed zeros at some indices.
fn rough(rank: usize, i: usize, world: usize) -> f64 {
    if i % 1009 == 5 && rank == (i / 1009) % world {
        return f64::NAN;
    }
    if i % 1013 == 6 && rank == 0 {
        return f64::INFINITY;
    }
    if i % 101 == 7 {
        return if rank.is_multiple_of(2) { 0.0 } else { -0.0 };
    }
    let m = mix(rank, i, 1);
    (m >> 11) as f64 / (1u64 << 53) as f64 * 2000.0 - 1000.0
}

fn ref_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == b {
        if a.is_sign_positive() {
            a
        } else {
            b
        }
    } else {
        a.max(b)
    }
}

fn ops(args: &Args, g: &TcpGroup, hash: &mut Fnv) -> Result<(), Stop> {
    let (rank, world) = (g.rank(), g.world_size());
    let sizes = [0usize, 1, 7, 1000, 16_385, 1_000_003];
    for &n in &sizes {
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            for exact_values in [true, false] {
                let value = |r: usize, i: usize| {
                    if exact_values {
                        exact(r, i)
                    } else {
                        rough(r, i, world)
                    }
                };
                // Reference per element, folded over ranks in f64.
                let expect = |i: usize| {
                    let vals = (0..world).map(|r| value(r, i));
                    match op {
                        ReduceOp::Sum => vals.sum::<f64>(),
                        ReduceOp::Max => vals.reduce(ref_max).unwrap(),
                    }
                };
                let abs_sum = |i: usize| (0..world).map(|r| value(r, i).abs()).sum::<f64>();

                let mut a: Vec<f32> = (0..n).map(|i| value(rank, i) as f32).collect();
                g.all_reduce(ReduceBuf::F32(&mut a), op)?;
                for (i, &got) in a.iter().enumerate() {
                    let want = if op == ReduceOp::Max || exact_values {
                        // Exact: f32 inputs, exact sum / max.
                        let vals = (0..world).map(|r| value(r, i) as f32 as f64);
                        match op {
                            ReduceOp::Sum => vals.sum::<f64>(),
                            ReduceOp::Max => vals.reduce(ref_max).unwrap(),
                        }
                    } else {
                        expect(i)
                    };
                    check_float(got as f64, want, abs_sum(i), op, exact_values, 1e-5)
                        .map_err(|m| wrong(format!("f32 {op} n={n} [{i}]: {m}")))?;
                }
                hash.add(bytes_of(&a));

                let mut b: Vec<f64> = (0..n).map(|i| value(rank, i)).collect();
                g.all_reduce(ReduceBuf::F64(&mut b), op)?;
                for (i, &got) in b.iter().enumerate() {
                    check_float(got, expect(i), abs_sum(i), op, exact_values, 1e-12)
                        .map_err(|m| wrong(format!("f64 {op} n={n} [{i}]: {m}")))?;
                }
                hash.add(bytes_of(&b));
            }
            let mut c: Vec<i64> = (0..n).map(|i| mix(rank, i, 2) as i64).collect();
            g.all_reduce(ReduceBuf::I64(&mut c), op)?;
            for (i, &got) in c.iter().enumerate() {
                let vals = (0..world).map(|r| mix(r, i, 2) as i64);
                let want = match op {
                    ReduceOp::Sum => vals.fold(0i64, i64::wrapping_add),
                    ReduceOp::Max => vals.max().unwrap(),
                };
                if got != want {
                    return Err(wrong(format!("i64 {op} n={n} [{i}]: {got} != {want}")));
                }
            }
            hash.add(bytes_of(&c));
        }
    }

    for n in [0usize, 1, 7, 1001, 300_007] {
        let send: Vec<u8> = (0..n).map(|i| mix(rank, i, 3) as u8).collect();
        let mut recv = vec![0xAAu8; n * world];
        g.all_gather(&send, &mut recv)?;
        for r in 0..world {
            for i in 0..n {
                if recv[r * n + i] != mix(r, i, 3) as u8 {
                    return Err(wrong(format!("all_gather n={n}: block {r} byte {i}")));
                }
            }
        }
        hash.add(&recv);
    }

    for root in 0..world {
        for n in [0usize, 1, 7, 70_001, 1_000_003] {
            let mut buf: Vec<u8> = if rank == root {
                (0..n).map(|i| mix(root, i, 4) as u8).collect()
            } else {
                vec![0xAA; n]
            };
            g.broadcast(&mut buf, root)?;
            if let Some(i) = (0..n).find(|&i| buf[i] != mix(root, i, 4) as u8) {
                return Err(wrong(format!("broadcast root={root} n={n}: byte {i}")));
            }
            hash.add(&buf);
        }
    }

    // Barrier: nobody leaves before everyone has entered (the files prove it).
    for round in 0..3 {
        if let Some(dir) = &args.dir {
            std::thread::sleep(Duration::from_millis((rank * 40) as u64));
            std::fs::write(dir.join(format!("round{round}-rank{rank}")), b"")
                .map_err(|e| wrong(format!("barrier marker: {e}")))?;
        }
        g.barrier()?;
        if let Some(dir) = &args.dir {
            for r in 0..world {
                if !dir.join(format!("round{round}-rank{r}")).exists() {
                    return Err(wrong(format!(
                        "left barrier {round} before rank {r} entered"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_float(
    got: f64,
    want: f64,
    abs_sum: f64,
    op: ReduceOp,
    exact: bool,
    tol: f64,
) -> Result<(), String> {
    let ok = if want.is_nan() {
        got.is_nan()
    } else if op == ReduceOp::Max || exact || want.is_infinite() {
        got.to_bits() == want.to_bits() || (got == want && want != 0.0)
    } else {
        (got - want).abs() <= tol * abs_sum.max(1.0)
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {got:?} want {want:?}"))
    }
}

fn wrong(what: String) -> Stop {
    Stop::Wrong(what)
}

/// All-reduces until an error. The victim, with `--sleep-ms`, stalls in its own code once.
fn looping(args: &Args, g: &TcpGroup) -> Result<(), Stop> {
    let mut buf = vec![1.0f32; 200_000];
    for iter in 0..args.iters {
        if iter == 3 && args.sleep_ms > 0 && args.victim == Some(g.rank()) {
            std::thread::sleep(Duration::from_millis(args.sleep_ms));
        }
        buf.fill(1.0);
        g.all_reduce(ReduceBuf::F32(&mut buf), ReduceOp::Sum)?;
        if iter == 0 {
            say("READY");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(wrong("the loop ended without an error".into()))
}

/// Two agreeing all-reduces, then the victim deviates; the victim's call fails too.
fn mismatch(args: &Args, g: &TcpGroup) -> Result<(), Stop> {
    let n = if args.variant == "large" {
        1_000_000
    } else {
        100
    };
    for _ in 0..2 {
        let mut buf = vec![1.0f32; n];
        g.all_reduce(ReduceBuf::F32(&mut buf), ReduceOp::Sum)?;
    }
    let deviant = args.victim == Some(g.rank());
    if deviant && args.variant == "kind" {
        let mut buf = vec![0u8; n * 4];
        g.broadcast(&mut buf, 0)?;
    } else {
        let len = if deviant { n + 1 } else { n };
        let mut buf = vec![1.0f32; len];
        g.all_reduce(ReduceBuf::F32(&mut buf), ReduceOp::Sum)?;
    }
    // A rank may finish its part before hearing of the failure; the next call reports it.
    g.barrier()?;
    Err(wrong("the mismatch went unnoticed".into()))
}

/// Throughput of 25 MB f32 all-reduces (printed, never asserted).
fn bench(args: &Args, g: &TcpGroup, hash: &mut Fnv) -> Result<(), Stop> {
    let n = 25_000_000 / 4;
    let mut buf: Vec<f32> = (0..n).map(|i| exact(g.rank(), i) as f32).collect();
    g.all_reduce(ReduceBuf::F32(&mut buf), ReduceOp::Sum)?;
    hash.add(bytes_of(&buf));
    g.barrier()?;
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let start = Instant::now();
        g.all_reduce(ReduceBuf::F32(&mut buf), ReduceOp::Sum)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[times.len() / 2]);
    let world = g.world_size() as f64;
    let bytes = (n * 4) as f64;
    // Bus bandwidth: what each rank sends (and receives) per second in a ring all-reduce.
    let bus = |secs: f64| bytes * 2.0 * (world - 1.0) / world / secs / 1e6;
    say(&format!(
        "BENCH world={world} bytes={bytes} iters={} best_ms={:.1} median_ms={:.1} \
         algbw_MBps(best/median)={:.0}/{:.0} busbw_MBps(best/median)={:.0}/{:.0}",
        args.iters,
        best * 1e3,
        median * 1e3,
        bytes / best / 1e6,
        bytes / median / 1e6,
        bus(best),
        bus(median),
    ));
    Ok(())
}

fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: only called with f32 / f64 / i64 slices: plain numbers without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        // Separate consecutive buffers.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
}

#[cfg(test)]
mod tests {
    use super::mix;

    /// The test data as they were before the mixer moved to `lgaf-splitmix`.
    #[test]
    fn test_data_are_pinned() {
        assert_eq!(mix(0, 0, 1), 0x2848_d6a4_a7b2_8bc1);
        assert_eq!(mix(3, 1000, 1), 0x8229_aeee_0ba7_c0c1);
        assert_eq!(mix(1, 2, 0), 0x0572_91b3_66a5_f0bc);
    }
}
