//! What went wrong, in a form that can be stored (the group stays failed), sent to the other
//! ranks in an abort frame (so every rank blames the same peer), and turned into a
//! [`CollectiveError`].

use std::io;

use crate::CollectiveError;

/// Longest string kept in an abort frame; the rest is cut.
const MAX_TEXT: usize = 2048;

#[derive(Clone, Debug)]
pub(super) enum Fault {
    /// The culprit sent nothing (or took nothing) for `waited_ms`.
    Timeout { waited_ms: u64 },
    /// The connection to the culprit broke.
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    /// The culprit is running another operation or size.
    Mismatch { expected: String, found: String },
    /// The culprit called an operation wrongly (its own bug; it gave up before sending).
    Usage { message: String },
}

/// A failure of the group: who is to blame, who saw it, what it was.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub culprit: usize,
    pub seen_by: usize,
    pub fault: Fault,
}

impl Failure {
    /// The error as reported on rank `own_rank` during `op`; `addrs` are all ranks' addresses.
    pub fn to_error(&self, op: &'static str, own_rank: usize, addrs: &[String]) -> CollectiveError {
        let peer = self.culprit;
        let addr = addrs.get(peer).cloned().unwrap_or_default();
        let note = if self.seen_by == own_rank {
            String::new()
        } else {
            format!(" (seen by rank {})", self.seen_by)
        };
        match &self.fault {
            Fault::Timeout { waited_ms } => CollectiveError::Timeout {
                op,
                peer,
                addr,
                waited_ms: *waited_ms,
            },
            Fault::Io { kind, message } => CollectiveError::Io {
                op,
                peer,
                addr,
                source: io::Error::new(*kind, format!("{message}{note}")),
            },
            Fault::Mismatch { expected, found } => CollectiveError::Mismatch {
                op,
                peer,
                addr,
                expected: expected.clone(),
                found: format!("{found}{note}"),
            },
            Fault::Usage { message } if peer == own_rank && self.seen_by == own_rank => {
                CollectiveError::Usage {
                    op,
                    message: message.clone(),
                }
            }
            Fault::Usage { message } => CollectiveError::Mismatch {
                op,
                peer,
                addr,
                expected: "the same operation on every rank".into(),
                found: format!("a call it rejected: {message}{note}"),
            },
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (code, io_kind, waited_ms, a, b) = match &self.fault {
            Fault::Timeout { waited_ms } => (1u8, 0u8, *waited_ms, "", ""),
            Fault::Io { kind, message } => (2, io_kind_code(*kind), 0, message.as_str(), ""),
            Fault::Mismatch { expected, found } => (3, 0, 0, expected.as_str(), found.as_str()),
            Fault::Usage { message } => (4, 0, 0, message.as_str(), ""),
        };
        let mut out = Vec::with_capacity(32 + a.len() + b.len());
        out.extend_from_slice(&(self.culprit as u32).to_le_bytes());
        out.extend_from_slice(&(self.seen_by as u32).to_le_bytes());
        out.push(code);
        out.push(io_kind);
        out.extend_from_slice(&waited_ms.to_le_bytes());
        for s in [a, b] {
            let s = truncate(s);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = b;
        let culprit = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        let seen_by = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        let code = take(&mut r, 1)?[0];
        let io_kind = take(&mut r, 1)?[0];
        let waited_ms = u64::from_le_bytes(take(&mut r, 8)?.try_into().ok()?);
        let mut string = || -> Option<String> {
            let n = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
            Some(String::from_utf8_lossy(take(&mut r, n)?).into_owned())
        };
        let a = string()?;
        let b = string()?;
        let fault = match code {
            1 => Fault::Timeout { waited_ms },
            2 => Fault::Io {
                kind: io_kind_from(io_kind),
                message: a,
            },
            3 => Fault::Mismatch {
                expected: a,
                found: b,
            },
            4 => Fault::Usage { message: a },
            _ => return None,
        };
        Some(Self {
            culprit,
            seen_by,
            fault,
        })
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

const IO_KINDS: [io::ErrorKind; 6] = [
    io::ErrorKind::Other,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::ConnectionAborted,
    io::ErrorKind::TimedOut,
];

fn io_kind_code(kind: io::ErrorKind) -> u8 {
    IO_KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

fn io_kind_from(code: u8) -> io::ErrorKind {
    IO_KINDS
        .get(code as usize)
        .copied()
        .unwrap_or(io::ErrorKind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_round_trip_and_keep_the_culprit() {
        let addrs: Vec<String> = (0..3).map(|r| format!("10.0.0.{r}:99")).collect();
        let faults = [
            Fault::Timeout { waited_ms: 2500 },
            Fault::Io {
                kind: io::ErrorKind::ConnectionReset,
                message: "reset".into(),
            },
            Fault::Mismatch {
                expected: "x".into(),
                found: "y".repeat(5000),
            },
            Fault::Usage {
                message: "bad root".into(),
            },
        ];
        for fault in faults {
            let f = Failure {
                culprit: 2,
                seen_by: 1,
                fault,
            };
            let g = Failure::decode(&f.encode()).expect("decodes");
            assert_eq!((g.culprit, g.seen_by), (2, 1));
            let e = g.to_error("all_reduce", 0, &addrs);
            let text = e.to_string();
            assert!(
                text.contains("rank 2") && text.contains("10.0.0.2:99"),
                "{text}"
            );
        }
        assert!(Failure::decode(&[1, 2, 3]).is_none());
    }
}
