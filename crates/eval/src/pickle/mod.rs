//! A small, safe reader and writer for the pickles that verification `.bin`
//! files are made of.
//!
//! [`parse`] runs the pickle machine for the handful of opcodes such files use
//! (lists, tuples, bools, byte strings, text, the memo, framing) and refuses
//! every other opcode. It calls no code: the only globals it accepts are the
//! two that Python 3 writes when it pickles `bytes` under protocol 2
//! (`_codecs.encode(text, 'latin1')` and `bytes()` for the empty value), and it
//! evaluates those itself. Errors carry the byte offset and the opcode.
//!
//! [`Writer`] produces protocol 4 pickles of the same kinds of values.

pub mod opcode;
mod unpickler;
mod writer;

use std::fmt;
use std::sync::Arc;

pub use unpickler::{parse, MAX_DEPTH, MAX_OPCODES};
pub use writer::Writer;

/// One object of a pickle and the byte offset of the opcode that made it.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub offset: usize,
    pub kind: Kind,
}

/// The objects that verification files hold. Objects that the pickle refers
/// to more than once (through the memo) are shared rather than copied, so a
/// small file cannot expand into a huge tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Bool(bool),
    /// Python 2 `str` or Python 3 `bytes`.
    Bytes(Arc<[u8]>),
    /// Python 3 `str` (Python 2 `unicode`).
    Str(Arc<str>),
    List(Arc<[Value]>),
    Tuple(Arc<[Value]>),
}

impl Kind {
    /// The Python type, for messages such as "expected a list, found bytes".
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Bool(_) => "bool",
            Kind::Bytes(_) => "bytes",
            Kind::Str(_) => "str",
            Kind::List(_) => "list",
            Kind::Tuple(_) => "tuple",
        }
    }
}

/// Why a pickle was refused, and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct PickleError {
    /// Byte offset of the opcode at fault (or of the end of the data when it
    /// ends early).
    pub offset: usize,
    /// The opcode at fault, when there is one.
    pub opcode: Option<u8>,
    pub problem: Problem,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}", self.offset)?;
        if let Some(op) = self.opcode {
            write!(f, ", opcode {} (0x{op:02x})", opcode::name(op))?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What is wrong with a pickle.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("truncated: needs {needed} more bytes, {available} remain")]
    Truncated { needed: u64, available: usize },

    #[error("no newline ends the operand (the data ends first)")]
    UnterminatedLine,

    #[error("the data ends without a STOP opcode")]
    NoStop,

    #[error(
        "opcode not supported (verification files hold only lists, tuples, bools and byte strings)"
    )]
    UnsupportedOpcode,

    #[error("protocol {0} is newer than the highest known ({max})", max = opcode::HIGHEST_PROTOCOL)]
    UnsupportedProtocol(u8),

    #[error("negative length {0}")]
    NegativeLength(i32),

    #[error("text is not valid UTF-8")]
    InvalidUtf8,

    #[error("expected {expected} on the stack, found {found}")]
    UnexpectedType {
        expected: &'static str,
        found: &'static str,
    },

    #[error("needs {needed} objects above the last MARK, found {found}")]
    StackUnderflow { needed: usize, found: usize },

    #[error("no MARK is open")]
    NoMark,

    #[error("memo key {0} was never stored")]
    MissingMemo(u32),

    #[error(
        "global {module}.{name} is not allowed (only _codecs.encode and bytes, which Python 3 uses for bytes under protocol 2)"
    )]
    ForbiddenGlobal { module: String, name: String },

    #[error(
        "numpy object {module}.{name}: numpy arrays are not supported, store the values as a Python list (e.g. issame.tolist())"
    )]
    NumpyObject { module: String, name: String },

    #[error("{callable} called with {found}; expected {expected}")]
    BadArguments {
        callable: &'static str,
        expected: &'static str,
        found: String,
    },

    #[error("character U+{0:04X} is not latin-1, so it is not a byte")]
    NotLatin1(u32),

    #[error("a callable ({0}) is not a value")]
    CallableAsValue(&'static str),

    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,

    #[error(
        "more than {MAX_OPCODES} opcodes (MAX_OPCODES); verification files need about 2 per \
         image and 1 per pair"
    )]
    TooManyOpcodes,

    #[error("a list contains itself")]
    Cyclic,

    #[error("STOP leaves {items} objects on the stack and {marks} MARKs open; expected one object and none")]
    UnbalancedStop { items: usize, marks: usize },

    #[error("{0} bytes follow the STOP opcode")]
    TrailingBytes(usize),
}
