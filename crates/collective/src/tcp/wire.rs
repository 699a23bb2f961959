//! Byte layouts of the handshake and of the frame header every message travels behind.
//!
//! Integers in headers are little-endian. Payloads are the caller's elements in native byte
//! order (no per-element conversion on the hot path); the handshake carries a byte-order mark
//! so a peer with the other order is refused instead of silently corrupting sums.

use std::fmt;

use crate::{DType, ReduceOp};

/// Bumped whenever the handshake or frame layout changes.
pub(super) const PROTOCOL_VERSION: u32 = 1;
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"LGAF");
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"lgfr");
/// Written in native order: a peer reading it reversed has the other byte order.
const BYTE_ORDER_MARK: u32 = 0x0102_0304;

pub(super) const HELLO_LEN: usize = 32;
pub(super) const HEADER_LEN: usize = 40;

/// What each side of a new connection says first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    /// The group tag (training generation).
    pub tag: u64,
    pub rank: u32,
    pub world: u32,
}

/// Why a hello was not understood at all.
#[derive(Debug, thiserror::Error)]
pub(super) enum HelloError {
    #[error("it is not an LGAF collective endpoint (bad magic number)")]
    NotOurs,
    #[error("it speaks collective protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("it runs on a machine with the other byte order")]
    ByteOrder,
}

/// What arrived where a frame header was expected: the stream is out of sync (or the peer
/// is not what it claimed). Shows the header's first 16 bytes.
#[derive(Debug, thiserror::Error)]
#[error("a garbled frame header {0:02x?}")]
pub(super) struct GarbledHeader([u8; 16]);

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&BYTE_ORDER_MARK.to_ne_bytes());
        b[16..24].copy_from_slice(&self.tag.to_le_bytes());
        b[24..28].copy_from_slice(&self.rank.to_le_bytes());
        b[28..32].copy_from_slice(&self.world.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, HelloError> {
        if u32_at(b, 0) != HELLO_MAGIC {
            return Err(HelloError::NotOurs);
        }
        let version = u32_at(b, 4);
        if version != PROTOCOL_VERSION {
            return Err(HelloError::Version(version));
        }
        if u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes")) != BYTE_ORDER_MARK {
            return Err(HelloError::ByteOrder);
        }
        Ok(Self {
            tag: u64_at(b, 16),
            rank: u32_at(b, 24),
            world: u32_at(b, 28),
        })
    }
}

/// Which collective a frame belongs to, with the parameters every rank must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    AllReduce(DType, ReduceOp),
    AllGather,
    Broadcast { root: u32 },
    Barrier,
}

/// One collective call as every rank should see it: the n-th call on the group, its kind and
/// the caller's buffer length in bytes (per rank for all_gather).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OpDesc {
    pub seq: u64,
    pub kind: OpKind,
    pub len: u64,
}

impl fmt::Display for OpDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation #{} ", self.seq)?;
        match self.kind {
            OpKind::AllReduce(dtype, op) => {
                write!(f, "all_reduce({dtype}, {op}) of {} bytes", self.len)
            }
            OpKind::AllGather => write!(f, "all_gather of {} bytes per rank", self.len),
            OpKind::Broadcast { root } => {
                write!(f, "broadcast from rank {root} of {} bytes", self.len)
            }
            OpKind::Barrier => f.write_str("barrier"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FrameKind {
    /// Part of an operation's data; `arg` is the payload length.
    Data,
    /// "I am alive, inside `op`, waiting for rank `arg`": keeps a peer that waits on us from
    /// blaming us for a stall that is someone else's.
    Heartbeat,
    /// The group failed; the payload is the encoded failure (`arg` bytes).
    Abort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub kind: FrameKind,
    pub op: OpDesc,
    pub arg: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        b[4] = match self.kind {
            FrameKind::Data => 1,
            FrameKind::Heartbeat => 2,
            FrameKind::Abort => 3,
        };
        let (code, dtype, reduce, root) = match self.op.kind {
            OpKind::AllReduce(dtype, op) => (
                1,
                match dtype {
                    DType::F32 => 1,
                    DType::F64 => 2,
                    DType::I64 => 3,
                },
                match op {
                    ReduceOp::Sum => 1,
                    ReduceOp::Max => 2,
                },
                0,
            ),
            OpKind::AllGather => (2, 0, 0, 0),
            OpKind::Broadcast { root } => (3, 0, 0, root),
            OpKind::Barrier => (4, 0, 0, 0),
        };
        b[5] = code;
        b[6] = dtype;
        b[7] = reduce;
        b[8..12].copy_from_slice(&root.to_le_bytes());
        b[16..24].copy_from_slice(&self.op.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.op.len.to_le_bytes());
        b[32..40].copy_from_slice(&self.arg.to_le_bytes());
        b
    }

    /// Fails on bytes that are not a header (the stream is out of sync).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, GarbledHeader> {
        let garbled = || GarbledHeader(b[..16].try_into().expect("16 bytes"));
        if u32_at(b, 0) != FRAME_MAGIC {
            return Err(garbled());
        }
        let kind = match b[4] {
            1 => FrameKind::Data,
            2 => FrameKind::Heartbeat,
            3 => FrameKind::Abort,
            _ => return Err(garbled()),
        };
        let op_kind = match (b[5], b[6], b[7]) {
            (1, d, r) => OpKind::AllReduce(
                match d {
                    1 => DType::F32,
                    2 => DType::F64,
                    3 => DType::I64,
                    _ => return Err(garbled()),
                },
                match r {
                    1 => ReduceOp::Sum,
                    2 => ReduceOp::Max,
                    _ => return Err(garbled()),
                },
            ),
            (2, _, _) => OpKind::AllGather,
            (3, _, _) => OpKind::Broadcast { root: u32_at(b, 8) },
            (4, _, _) => OpKind::Barrier,
            _ => return Err(garbled()),
        };
        Ok(Self {
            kind,
            op: OpDesc {
                seq: u64_at(b, 16),
                kind: op_kind,
                len: u64_at(b, 24),
            },
            arg: u64_at(b, 32),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_refuses_strangers() {
        let h = Hello {
            tag: 0xdead_beef_0042,
            rank: 3,
            world: 5,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut b = h.encode();
        b[0] ^= 1;
        assert!(matches!(Hello::decode(&b), Err(HelloError::NotOurs)));
        let mut b = h.encode();
        b[4] = 9;
        assert!(matches!(Hello::decode(&b), Err(HelloError::Version(9))));
        let mut b = h.encode();
        b[8..12].reverse();
        assert!(matches!(Hello::decode(&b), Err(HelloError::ByteOrder)));
    }

    #[test]
    fn header_round_trips() {
        let kinds = [
            OpKind::AllReduce(DType::F32, ReduceOp::Sum),
            OpKind::AllReduce(DType::F64, ReduceOp::Max),
            OpKind::AllReduce(DType::I64, ReduceOp::Sum),
            OpKind::AllGather,
            OpKind::Broadcast { root: 7 },
            OpKind::Barrier,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            for fk in [FrameKind::Data, FrameKind::Heartbeat, FrameKind::Abort] {
                let h = Header {
                    kind: fk,
                    op: OpDesc {
                        seq: 1 << 40 | i as u64,
                        kind,
                        len: 1_000_003 * 4,
                    },
                    arg: 12345,
                };
                assert_eq!(Header::decode(&h.encode()).unwrap(), h);
            }
        }
        let mut b = [0u8; HEADER_LEN];
        b[4] = 1;
        assert_eq!(
            Header::decode(&b).unwrap_err().to_string(),
            "a garbled frame header [00, 00, 00, 00, 01, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00]"
        );
    }
}
