//! A network cut between two workers on different "hosts": each worker in its own network
//! namespace, joined by a veth pair, and the link dropped mid-run. The coordinator declares
//! the cut-off worker lost within the heartbeat deadline, the other one leaves its broken
//! group, the cut-off one stops (its coordinator is gone for it), and once the link is back
//! a restarted worker (as a pod would be) joins the next generation and the run finishes.
//!
//! Needs root and network namespaces (`ip netns`); elsewhere it prints why it was skipped.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::processes::{
    bin, coordinator_command, coordinator_url, tiny_config, wait_exit, wait_exit_or, work_dir, Log,
};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace `ns` holding one end of a veth pair (`inner`, 10.213.N.2), the other end
/// (`outer`, 10.213.N.1) in ours. Removed on drop.
struct Cut {
    ns: String,
    outer: String,
    host_ip: String,
    ns_ip: String,
}

impl Cut {
    fn create() -> Result<Cut, String> {
        let id = std::process::id() % 100_000;
        let subnet = id % 250 + 1;
        let cut = Cut {
            ns: format!("lgafns{id}"),
            outer: format!("lgafo{id}"),
            host_ip: format!("10.213.{subnet}.1"),
            ns_ip: format!("10.213.{subnet}.2"),
        };
        let inner = format!("lgafi{id}");
        ip(&["netns", "add", &cut.ns])?;
        ip(&[
            "link", "add", &cut.outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &cut.ns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", cut.host_ip),
            "dev",
            &cut.outer,
        ])?;
        ip(&["link", "set", &cut.outer, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", cut.ns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&["addr", "add", &format!("{}/24", cut.ns_ip), "dev", &inner])?;
        in_ns(&["link", "set", &inner, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(cut)
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.outer, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

#[test]
fn a_cut_link_is_detected_and_the_run_recovers_when_it_returns() {
    let cut = match Cut::create() {
        Ok(cut) => cut,
        Err(why) => {
            println!("skipped: cannot create a network namespace here: {why}");
            return;
        }
    };
    let dir = work_dir("netns", "cut", &tiny_config(8, 6, 2));

    let mut coordinator = coordinator_command(&dir)
        .args(["--workers", "2", "--run-id", "netns", "--grace-secs", "600"])
        .args(["--listen", &format!("{}:0", cut.host_ip)])
        .args(["--heartbeat-ms", "100", "--heartbeat-deadline-ms", "1500"])
        .args(["--collective-timeout-ms", "120000"])
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    let log = Log::default();
    log.collect(coordinator.stderr.take().unwrap());

    let worker = |slot: &str, bind: &str, netns: Option<&str>| {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("lgaf-worker"));
                c
            }
            None => Command::new(bin("lgaf-worker")),
        };
        cmd.args(["--coordinator", &url, "--slot", slot])
            .args(["--collective-bind", &format!("{bind}:0")])
            .env("NO_COLOR", "1")
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Every child's output is read, so none can block on a full pipe, and a failure shows
    // all of it.
    let mut here = worker("0", &cut.host_ip, None);
    let here_log = Log::default();
    here_log.collect(here.stderr.take().unwrap());
    let mut there = worker("1", &cut.ns_ip, Some(&cut.ns));
    let there_log = Log::default();
    there_log.collect(there.stderr.take().unwrap());
    log.wait_for("step 5/", Duration::from_secs(300));

    cut.link(false);
    let cut_at = Instant::now();
    log.wait_for(
        "no heartbeat within the 1500 ms deadline",
        Duration::from_secs(30),
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(10),
        "detected after {:?}",
        cut_at.elapsed()
    );
    // The cut-off worker finds its coordinator gone and stops by itself.
    let status = wait_exit(&mut there, Duration::from_secs(30));
    assert!(!status.success());
    there_log.wait_for("has not answered a heartbeat", Duration::from_secs(5));

    // The link returns; the worker is started again, as its pod would be. From here on
    // both workers are pods: one that stops is started again. (The worker on this side
    // normally stays up through the cut; should it have lost the coordinator too, whose
    // address is on the interface that went down, its pod restarts it.)
    cut.link(true);
    let mut again = worker("1", &cut.ns_ip, Some(&cut.ns));
    let again_log = Log::default();
    again_log.collect(again.stderr.take().unwrap());
    let all_logs = || {
        format!(
            "coordinator:\n{}\nworker 0:\n{}\nworker 1 (cut off):\n{}\nworker 1 (again):\n{}",
            log.text(),
            here_log.text(),
            there_log.text(),
            again_log.text()
        )
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = coordinator.try_wait().unwrap() {
            break status;
        }
        for (slot, child, child_log, netns, bind) in [
            ("0", &mut here, &here_log, None, &cut.host_ip),
            (
                "1",
                &mut again,
                &again_log,
                Some(cut.ns.as_str()),
                &cut.ns_ip,
            ),
        ] {
            // A worker that finished (the run is over; the coordinator still lingers for
            // its health probes) is done; one that failed is started again.
            let failed = child
                .try_wait()
                .unwrap()
                .is_some_and(|exited| !exited.success());
            if failed {
                child_log.push(&format!(
                    "[test] worker {slot} stopped; its pod is restarted"
                ));
                *child = worker(slot, bind, netns);
                child_log.collect(child.stderr.take().unwrap());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run did not finish within 300 s\n{}",
            all_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = log.text();
    assert!(status.success(), "{}", all_logs());
    assert!(text.contains("generation 2 formed"), "{text}");
    assert!(text.contains("step 36/36 epoch 5"), "{text}");
    assert!(wait_exit_or(&mut here, Duration::from_secs(30), all_logs).success());
    assert!(wait_exit_or(&mut again, Duration::from_secs(30), all_logs).success());
}
