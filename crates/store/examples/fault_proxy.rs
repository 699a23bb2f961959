//! The tests' fault-injecting TCP proxy (`tests/support/fault_proxy.rs`) as a program, for
//! `tests/chaos`, which injects storage faults into a longer run from Python.
//!
//! `fault_proxy <upstream host:port>` prints `listening <port>`, then takes one command a
//! line on stdin and answers each with one line:
//! `none`, `down`, `slowdown <requests>`, `reset <after part bytes>`,
//! `throttle <bytes a second>`: plays that fault from now on (answer `ok`);
//! `stats`: `connections <n> slow_downs <n> resets <n> bytes_up <n>`.
//! It stops at the end of its input.

use std::io::{BufRead, Write};
use std::net::ToSocketAddrs;

#[path = "../tests/support/fault_proxy.rs"]
mod fault_proxy;

use fault_proxy::{Fault, FaultProxy};

fn main() {
    let Some(upstream) = std::env::args().nth(1) else {
        eprintln!("usage: fault_proxy <upstream host:port>");
        std::process::exit(2);
    };
    let Some(upstream) = upstream.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        eprintln!("fault_proxy: {upstream:?} is not a host:port");
        std::process::exit(2);
    };
    let proxy = FaultProxy::start(upstream);
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {}", proxy.port())
        .and_then(|()| out.flush())
        .ok();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match command(&line) {
            Ok(Some(fault)) => {
                proxy.set(fault);
                "ok".to_string()
            }
            Ok(None) => {
                let i = proxy.injected();
                format!(
                    "connections {} slow_downs {} resets {} bytes_up {}",
                    i.connections, i.slow_downs, i.resets, i.bytes_up
                )
            }
            Err(e) => format!("error {e}"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}

/// The fault a command line asks for; `None` for `stats`.
fn command(line: &str) -> Result<Option<Fault>, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let mut number = || -> Result<u64, String> {
        let word = words.next().ok_or(format!("{verb}: a number is missing"))?;
        word.parse()
            .map_err(|_| format!("{verb}: {word:?} is not a whole number"))
    };
    Ok(Some(match verb {
        "none" => Fault::None,
        "down" => Fault::Down,
        "slowdown" => Fault::SlowDown {
            requests: number()?,
        },
        "reset" => Fault::ResetInPart {
            after_bytes: number()?,
        },
        "throttle" => Fault::Throttle {
            bytes_per_sec: number()?,
        },
        "stats" => return Ok(None),
        other => return Err(format!("unknown command {other:?}")),
    }))
}
