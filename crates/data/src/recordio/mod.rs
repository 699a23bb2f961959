//! insightface / MXNet RecordIO packs (`train.rec` + `train.idx`), read and
//! written bit-compatibly with MXNet 1.9 (`dmlc-core/src/recordio.cc`,
//! `python/mxnet/recordio.py`).
//!
//! # Format
//!
//! * **Frames.** A `.rec` is a sequence of frames: magic `0xced7230a` (u32
//!   LE), `lrecord` (u32 LE: continuation flag in the top 3 bits, payload
//!   length in the low 29), the payload, zero padding to a multiple of 4.
//!   A record whose payload holds the magic at a 4-byte-aligned position is
//!   split there: flags 1, 2, ..., 3 mark the first, middle and last parts,
//!   and the magic between parts is implied (flag 0 is a whole record).
//! * **Index.** `train.idx` has one `key<TAB>offset` line per record, the
//!   offset of its first frame. Records need not be in key order.
//! * **Payload.** An IRHeader `<IfQQ` (flag, label, id, id2); when
//!   `flag > 0`, `flag` f32 labels follow (and `label` is 0); then the
//!   encoded image.
//! * **insightface layout.** Record 0 has flag 2 and labels `(N+1, N+1+K)`:
//!   keys `1..=N` are images, keys `N+1..=N+K` are identity records whose
//!   labels `[start, end)` are the image keys of that identity. Packs
//!   without such a header record are valid too: every record is then an
//!   image, and identities come from the image labels.
//!
//! # Types
//!
//! * [`RecordPack`] reads a pack: image count, identities, labels, images
//!   by index (zero-copy unless split), and a file-order iterator.
//! * [`RecordFile`] is the raw keyed-record layer beneath it.
//! * [`PackWriter`] writes a pack in insightface's layout; [`RecordWriter`]
//!   writes raw keyed records. Both publish their files atomically.
//!
//! An `.idx` is checked against the `.rec` when a pack is opened: its records
//! must tile the file (each offset at a record's first frame, where the
//! previous record ends, the last one ending at the end of the file), so a
//! cut, emptied or edited index is refused rather than silently changing the
//! images. A missing `.idx` is rebuilt by scanning the `.rec`, and
//! [`IndexMode::Rebuild`] rebuilds and replaces one that does not match (see
//! [`RecordFile::open_with`]).

mod error;
mod frame;
mod index;
mod irheader;
mod layout;
mod pack;
mod pack_writer;
mod reader;
mod writer;

pub use error::{IndexMismatch, RecordIoError, RecordRef};
pub use frame::MAGIC;
pub use irheader::{pack, IrHeader, IrLabel, IrRecord, ShortPayload, IR_HEADER_LEN};
pub use layout::PackHeader;
pub use pack::{Images, PackImage, RecordPack};
pub use pack_writer::{PackSummary, PackWriter};
pub use reader::{IndexMode, IndexSource, RecordFile, Records};
pub use writer::{RecordWriter, Written};
