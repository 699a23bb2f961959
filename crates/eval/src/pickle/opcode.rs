//! The pickle opcodes this crate reads or writes, with their names as in
//! CPython's `pickletools` (for error messages).

pub const MARK: u8 = b'(';
pub const STOP: u8 = b'.';
pub const PROTO: u8 = 0x80;
pub const FRAME: u8 = 0x95;

pub const EMPTY_LIST: u8 = b']';
pub const APPEND: u8 = b'a';
pub const APPENDS: u8 = b'e';
pub const EMPTY_TUPLE: u8 = b')';
pub const TUPLE: u8 = b't';
pub const TUPLE1: u8 = 0x85;
pub const TUPLE2: u8 = 0x86;
pub const TUPLE3: u8 = 0x87;

pub const NEWTRUE: u8 = 0x88;
pub const NEWFALSE: u8 = 0x89;

/// Python 2 `str`: raw bytes.
pub const BINSTRING: u8 = b'T';
pub const SHORT_BINSTRING: u8 = b'U';
/// Python 3 `bytes`.
pub const BINBYTES: u8 = b'B';
pub const SHORT_BINBYTES: u8 = b'C';
pub const BINBYTES8: u8 = 0x8e;
/// Python 3 `str` (UTF-8).
pub const BINUNICODE: u8 = b'X';
pub const SHORT_BINUNICODE: u8 = 0x8c;
pub const BINUNICODE8: u8 = 0x8d;

pub const BINPUT: u8 = b'q';
pub const LONG_BINPUT: u8 = b'r';
pub const MEMOIZE: u8 = 0x94;
pub const BINGET: u8 = b'h';
pub const LONG_BINGET: u8 = b'j';

pub const GLOBAL: u8 = b'c';
pub const STACK_GLOBAL: u8 = 0x93;
pub const REDUCE: u8 = b'R';

/// The highest protocol CPython writes today.
pub const HIGHEST_PROTOCOL: u8 = 5;

/// `pickletools`' name of an opcode byte, for any opcode of protocols 0 to 5,
/// so that an error about a refused opcode says which one it was.
pub fn name(op: u8) -> &'static str {
    match op {
        MARK => "MARK",
        STOP => "STOP",
        PROTO => "PROTO",
        FRAME => "FRAME",
        EMPTY_LIST => "EMPTY_LIST",
        APPEND => "APPEND",
        APPENDS => "APPENDS",
        EMPTY_TUPLE => "EMPTY_TUPLE",
        TUPLE => "TUPLE",
        TUPLE1 => "TUPLE1",
        TUPLE2 => "TUPLE2",
        TUPLE3 => "TUPLE3",
        NEWTRUE => "NEWTRUE",
        NEWFALSE => "NEWFALSE",
        BINSTRING => "BINSTRING",
        SHORT_BINSTRING => "SHORT_BINSTRING",
        BINBYTES => "BINBYTES",
        SHORT_BINBYTES => "SHORT_BINBYTES",
        BINBYTES8 => "BINBYTES8",
        BINUNICODE => "BINUNICODE",
        SHORT_BINUNICODE => "SHORT_BINUNICODE",
        BINUNICODE8 => "BINUNICODE8",
        BINPUT => "BINPUT",
        LONG_BINPUT => "LONG_BINPUT",
        MEMOIZE => "MEMOIZE",
        BINGET => "BINGET",
        LONG_BINGET => "LONG_BINGET",
        GLOBAL => "GLOBAL",
        STACK_GLOBAL => "STACK_GLOBAL",
        REDUCE => "REDUCE",
        // Opcodes that verification files never contain; named only for errors.
        b'N' => "NONE",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'M' => "BININT2",
        b'L' => "LONG",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        b'G' => "BINFLOAT",
        b'l' => "LIST",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b's' => "SETITEM",
        b'u' => "SETITEMS",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        b'p' => "PUT",
        b'g' => "GET",
        b'b' => "BUILD",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'0' => "POP",
        b'1' => "DUP",
        b'2' => "POP_MARK",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown opcode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_pickletools() {
        assert_eq!(name(BINSTRING), "BINSTRING");
        assert_eq!(name(0x8c), "SHORT_BINUNICODE");
        assert_eq!(name(b'}'), "EMPTY_DICT");
        assert_eq!(name(0xff), "unknown opcode");
    }
}
