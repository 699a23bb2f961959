//! The pickle machine, restricted to what verification files contain.
//!
//! Lists and tuples live in an arena (`nodes`) while the machine runs: the
//! stack and the memo hold indices into it, so a list that is memoised and
//! then appended to is seen with its items wherever it is referred to, as in
//! Python. At STOP the arena becomes a [`Value`] tree (shared sub-trees stay
//! shared), checking for cycles and bounding the depth so that neither
//! building nor dropping the tree can overflow the call stack.

use std::collections::HashMap;
use std::sync::Arc;

use super::opcode::*;
use super::{Kind, PickleError, Problem, Value};

/// How deeply lists and tuples may nest. Verification files need 3 levels
/// (a tuple of lists of byte strings).
pub const MAX_DEPTH: usize = 32;

/// How many opcodes a pickle may run. A one-byte opcode can cost tens of bytes
/// of memory (a stack entry, a list, a memo entry, a value), so the count, not
/// the file size, bounds what parsing allocates. Verification files run about
/// 2 per image and 1 per pair: 35,000 for cfp_fp, so 2^20 is 30 times that.
pub const MAX_OPCODES: usize = 1 << 20;

/// Parses one pickle that makes up all of `data`.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    Unpickler::new(data).run()
}

/// A global that the machine evaluates itself.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Callable {
    /// `_codecs.encode(text, 'latin1')`: Python 3's protocol-2 form of `bytes`.
    CodecsEncode,
    /// `bytes()`: Python 3's protocol-2 form of `b''`.
    Bytes,
}

impl Callable {
    fn name(self) -> &'static str {
        match self {
            Callable::CodecsEncode => "_codecs.encode",
            Callable::Bytes => "bytes",
        }
    }
}

#[derive(Clone, Debug)]
enum Obj {
    Bool(bool),
    Bytes(Arc<[u8]>),
    Str(Arc<str>),
    List(usize),
    Tuple(usize),
    Callable(Callable),
}

impl Obj {
    fn type_name(&self) -> &'static str {
        match self {
            Obj::Bool(_) => "bool",
            Obj::Bytes(_) => "bytes",
            Obj::Str(_) => "str",
            Obj::List(_) => "list",
            Obj::Tuple(_) => "tuple",
            Obj::Callable(_) => "a callable",
        }
    }
}

/// An object on the stack or in the memo, with the opcode that made it.
#[derive(Clone, Debug)]
struct Item {
    offset: usize,
    opcode: u8,
    obj: Obj,
}

/// A list or tuple under construction.
#[derive(Default)]
struct Node {
    items: Vec<Item>,
}

/// Progress of turning one arena node into a shared slice of values.
#[derive(Clone)]
enum Built {
    Pending,
    InProgress,
    Done(Arc<[Value]>),
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset and byte of the opcode being executed, for errors.
    op_offset: usize,
    op: u8,
    stack: Vec<Item>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    nodes: Vec<Node>,
    /// Opcodes run so far, bounded by [`MAX_OPCODES`].
    opcodes: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            op_offset: 0,
            op: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            nodes: Vec::new(),
            opcodes: 0,
        }
    }

    fn fail(&self, problem: Problem) -> PickleError {
        PickleError {
            offset: self.op_offset,
            opcode: Some(self.op),
            problem,
        }
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let Some(&op) = self.data.get(self.pos) else {
                return Err(PickleError {
                    offset: self.pos,
                    opcode: None,
                    problem: Problem::NoStop,
                });
            };
            self.op_offset = self.pos;
            self.op = op;
            self.pos += 1;
            self.opcodes += 1;
            if self.opcodes > MAX_OPCODES {
                return Err(self.fail(Problem::TooManyOpcodes));
            }
            if op == STOP {
                return self.finish();
            }
            self.step(op)?;
        }
    }

    fn step(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            PROTO => {
                let version = self.read_u8()?;
                if version > HIGHEST_PROTOCOL {
                    return Err(self.fail(Problem::UnsupportedProtocol(version)));
                }
            }
            // Frames only group opcodes for buffered reading; the whole file
            // is in memory, so a frame just has to fit in it.
            FRAME => {
                let len = self.read_u64()?;
                self.check_available(len)?;
            }
            MARK => self.marks.push(self.stack.len()),
            EMPTY_LIST => self.push_node(Obj::List, Vec::new()),
            EMPTY_TUPLE => self.push_node(Obj::Tuple, Vec::new()),
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let items = self.pop_n(usize::from(op - TUPLE1 + 1))?;
                self.push_node(Obj::Tuple, items);
            }
            TUPLE => {
                let items = self.pop_mark()?;
                self.push_node(Obj::Tuple, items);
            }
            APPEND => {
                let item = self.pop()?;
                self.extend_top_list(&mut vec![item])?;
            }
            APPENDS => {
                let mut items = self.pop_mark()?;
                self.extend_top_list(&mut items)?;
            }
            NEWTRUE => self.push(Obj::Bool(true)),
            NEWFALSE => self.push(Obj::Bool(false)),
            BINSTRING => {
                let len = self.read_i32()?;
                let len =
                    u64::try_from(len).map_err(|_| self.fail(Problem::NegativeLength(len)))?;
                self.push_bytes(len)?;
            }
            SHORT_BINSTRING | SHORT_BINBYTES => {
                let len = self.read_u8()?;
                self.push_bytes(u64::from(len))?;
            }
            BINBYTES => {
                let len = self.read_u32()?;
                self.push_bytes(u64::from(len))?;
            }
            BINBYTES8 => {
                let len = self.read_u64()?;
                self.push_bytes(len)?;
            }
            SHORT_BINUNICODE => {
                let len = self.read_u8()?;
                self.push_str(u64::from(len))?;
            }
            BINUNICODE => {
                let len = self.read_u32()?;
                self.push_str(u64::from(len))?;
            }
            BINUNICODE8 => {
                let len = self.read_u64()?;
                self.push_str(len)?;
            }
            BINPUT => {
                let key = self.read_u8()?;
                self.memoize(u32::from(key))?;
            }
            LONG_BINPUT => {
                let key = self.read_u32()?;
                self.memoize(key)?;
            }
            MEMOIZE => {
                // Keys are dense from 0 under MEMOIZE; a memo of 2^32 entries
                // cannot come from a file that fits in memory.
                let key = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memoize(key)?;
            }
            BINGET => {
                let key = self.read_u8()?;
                self.recall(u32::from(key))?;
            }
            LONG_BINGET => {
                let key = self.read_u32()?;
                self.recall(key)?;
            }
            GLOBAL => {
                let module = self.read_line()?;
                let name = self.read_line()?;
                let callable = self.resolve(&module, &name)?;
                self.push(Obj::Callable(callable));
            }
            STACK_GLOBAL => {
                self.require(2)?;
                let name = self.pop()?;
                let name = self.expect_str(name)?;
                let module = self.pop()?;
                let module = self.expect_str(module)?;
                let callable = self.resolve(&module, &name)?;
                self.push(Obj::Callable(callable));
            }
            REDUCE => self.reduce()?,
            _ => return Err(self.fail(Problem::UnsupportedOpcode)),
        }
        Ok(())
    }

    fn finish(self) -> Result<Value, PickleError> {
        if self.stack.len() != 1 || !self.marks.is_empty() {
            return Err(self.fail(Problem::UnbalancedStop {
                items: self.stack.len(),
                marks: self.marks.len(),
            }));
        }
        let trailing = self.data.len() - self.pos;
        if trailing > 0 {
            return Err(self.fail(Problem::TrailingBytes(trailing)));
        }
        let mut built = vec![Built::Pending; self.nodes.len()];
        self.build(&self.stack[0], 0, &mut built)
    }

    // --- reading operands -------------------------------------------------

    fn check_available(&self, len: u64) -> Result<usize, PickleError> {
        let available = self.data.len() - self.pos;
        match usize::try_from(len) {
            Ok(n) if n <= available => Ok(n),
            _ => Err(self.fail(Problem::Truncated {
                needed: len,
                available,
            })),
        }
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], PickleError> {
        let n = self.check_available(len)?;
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let bytes = self.take(N as u64)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn read_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn read_u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn read_i32(&mut self) -> Result<i32, PickleError> {
        Ok(i32::from_le_bytes(self.take_array()?))
    }

    fn read_u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A newline-terminated operand of GLOBAL.
    fn read_line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.fail(Problem::UnterminatedLine));
        };
        let line =
            std::str::from_utf8(&rest[..len]).map_err(|_| self.fail(Problem::InvalidUtf8))?;
        self.pos += len + 1;
        Ok(line.to_owned())
    }

    // --- the stack ----------------------------------------------------------

    fn push(&mut self, obj: Obj) {
        self.stack.push(Item {
            offset: self.op_offset,
            opcode: self.op,
            obj,
        });
    }

    fn push_node(&mut self, kind: fn(usize) -> Obj, items: Vec<Item>) {
        self.nodes.push(Node { items });
        self.push(kind(self.nodes.len() - 1));
    }

    fn push_bytes(&mut self, len: u64) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        self.push(Obj::Bytes(bytes.into()));
        Ok(())
    }

    fn push_str(&mut self, len: u64) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| self.fail(Problem::InvalidUtf8))?;
        self.push(Obj::Str(text.into()));
        Ok(())
    }

    /// Objects pushed since the last MARK (or since the start when none is
    /// open) can be consumed; the ones below belong to an enclosing MARK.
    fn above_mark(&self) -> usize {
        self.stack.len() - self.marks.last().copied().unwrap_or(0)
    }

    fn require(&self, n: usize) -> Result<(), PickleError> {
        let found = self.above_mark();
        match found < n {
            true => Err(self.fail(Problem::StackUnderflow { needed: n, found })),
            false => Ok(()),
        }
    }

    fn pop(&mut self) -> Result<Item, PickleError> {
        self.require(1)?;
        self.stack.pop().ok_or_else(|| {
            self.fail(Problem::StackUnderflow {
                needed: 1,
                found: 0,
            })
        })
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Item>, PickleError> {
        self.require(n)?;
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.fail(Problem::NoMark))?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Item, PickleError> {
        self.require(1)?;
        self.stack.last().ok_or_else(|| {
            self.fail(Problem::StackUnderflow {
                needed: 1,
                found: 0,
            })
        })
    }

    fn extend_top_list(&mut self, items: &mut Vec<Item>) -> Result<(), PickleError> {
        let top = self.top()?;
        let Obj::List(node) = top.obj else {
            return Err(self.fail(Problem::UnexpectedType {
                expected: "a list",
                found: top.obj.type_name(),
            }));
        };
        self.nodes[node].items.append(items);
        Ok(())
    }

    fn expect_str(&self, item: Item) -> Result<String, PickleError> {
        match item.obj {
            Obj::Str(text) => Ok(text.to_string()),
            other => Err(self.fail(Problem::UnexpectedType {
                expected: "a str",
                found: other.type_name(),
            })),
        }
    }

    // --- the memo -------------------------------------------------------------

    fn memoize(&mut self, key: u32) -> Result<(), PickleError> {
        let item = self.top()?.clone();
        self.memo.insert(key, item);
        Ok(())
    }

    fn recall(&mut self, key: u32) -> Result<(), PickleError> {
        let item = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.fail(Problem::MissingMemo(key)))?;
        self.stack.push(item);
        Ok(())
    }

    // --- globals ----------------------------------------------------------------

    fn resolve(&self, module: &str, name: &str) -> Result<Callable, PickleError> {
        match (module, name) {
            ("_codecs", "encode") => Ok(Callable::CodecsEncode),
            // Python 3 writes `__builtin__` under protocol 2 for Python 2's sake.
            ("__builtin__" | "builtins", "bytes") => Ok(Callable::Bytes),
            _ if module == "numpy" || module.starts_with("numpy.") => {
                Err(self.fail(Problem::NumpyObject {
                    module: module.to_owned(),
                    name: name.to_owned(),
                }))
            }
            _ => Err(self.fail(Problem::ForbiddenGlobal {
                module: module.to_owned(),
                name: name.to_owned(),
            })),
        }
    }

    fn reduce(&mut self) -> Result<(), PickleError> {
        self.require(2)?;
        let args = self.pop()?;
        let callable = self.pop()?;
        let Obj::Callable(callable) = callable.obj else {
            return Err(self.fail(Problem::UnexpectedType {
                expected: "a callable",
                found: callable.obj.type_name(),
            }));
        };
        let Obj::Tuple(node) = args.obj else {
            return Err(self.fail(Problem::UnexpectedType {
                expected: "an argument tuple",
                found: args.obj.type_name(),
            }));
        };
        let args: Vec<&Obj> = self.nodes[node].items.iter().map(|i| &i.obj).collect();
        let bytes = match (callable, args.as_slice()) {
            (Callable::Bytes, []) => Arc::from(&[][..]),
            (Callable::CodecsEncode, [Obj::Str(text), Obj::Str(encoding)])
                if matches!(&**encoding, "latin1" | "latin-1") =>
            {
                latin1(text).map_err(|c| self.fail(Problem::NotLatin1(c)))?
            }
            _ => {
                let found = args.iter().map(|a| a.type_name()).collect::<Vec<_>>();
                return Err(self.fail(Problem::BadArguments {
                    callable: callable.name(),
                    expected: match callable {
                        Callable::Bytes => "no arguments",
                        Callable::CodecsEncode => "(str, 'latin1')",
                    },
                    found: format!("({})", found.join(", ")),
                }));
            }
        };
        self.push(Obj::Bytes(bytes));
        Ok(())
    }

    // --- building the value tree ----------------------------------------------

    fn build(&self, item: &Item, depth: usize, built: &mut [Built]) -> Result<Value, PickleError> {
        let fail = |problem| PickleError {
            offset: item.offset,
            opcode: Some(item.opcode),
            problem,
        };
        let kind = match &item.obj {
            Obj::Bool(b) => Kind::Bool(*b),
            Obj::Bytes(b) => Kind::Bytes(b.clone()),
            Obj::Str(s) => Kind::Str(s.clone()),
            Obj::Callable(c) => return Err(fail(Problem::CallableAsValue(c.name()))),
            Obj::List(node) | Obj::Tuple(node) => {
                if depth >= MAX_DEPTH {
                    return Err(fail(Problem::TooDeep));
                }
                let items = match &built[*node] {
                    Built::Done(items) => items.clone(),
                    Built::InProgress => return Err(fail(Problem::Cyclic)),
                    Built::Pending => {
                        built[*node] = Built::InProgress;
                        let items = self.nodes[*node]
                            .items
                            .iter()
                            .map(|child| self.build(child, depth + 1, built))
                            .collect::<Result<Arc<[Value]>, _>>()?;
                        built[*node] = Built::Done(items.clone());
                        items
                    }
                };
                match item.obj {
                    Obj::List(_) => Kind::List(items),
                    _ => Kind::Tuple(items),
                }
            }
        };
        Ok(Value {
            offset: item.offset,
            kind,
        })
    }
}

/// `text.encode('latin1')`: each character below U+0100 is one byte.
fn latin1(text: &str) -> Result<Arc<[u8]>, u32> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| u32::from(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &[u8]) -> PickleError {
        parse(data).expect_err("the pickle should be refused")
    }

    #[test]
    fn reads_a_tuple_of_a_list_and_a_bool() {
        let value = parse(b"\x80\x02]q\x00(U\x02abq\x01h\x01e\x88\x86q\x02.").unwrap();
        let Kind::Tuple(items) = &value.kind else {
            panic!("{value:?}")
        };
        let Kind::List(list) = &items[0].kind else {
            panic!("{value:?}")
        };
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].kind, Kind::Bytes(Arc::from(&b"ab"[..])));
        // BINGET yields the same object, with the offset of its creation.
        assert_eq!(list[1], list[0]);
        assert_eq!(list[0].offset, 6);
        assert_eq!(items[1].kind, Kind::Bool(true));
    }

    #[test]
    fn a_memoised_list_sees_later_appends() {
        // l = []; memo; (l, l) with an append in between.
        let value = parse(b"\x80\x02]q\x00\x88ah\x00\x86.").unwrap();
        let Kind::Tuple(items) = &value.kind else {
            panic!("{value:?}")
        };
        assert_eq!(items[0], items[1]);
        assert_eq!(
            items[1].kind,
            Kind::List(Arc::from(vec![Value {
                offset: 5,
                kind: Kind::Bool(true)
            }]))
        );
    }

    #[test]
    fn truncation_names_the_opcode_and_the_shortfall() {
        let e = err(b"\x80\x02U\x05ab");
        assert_eq!(e.offset, 2);
        assert_eq!(
            e.to_string(),
            "byte 2, opcode SHORT_BINSTRING (0x55): truncated: needs 5 more bytes, 2 remain"
        );
        assert_eq!(err(b"\x80\x02]").problem, Problem::NoStop);
    }

    #[test]
    fn refuses_code_execution_and_other_opcodes() {
        let e = err(b"\x80\x02cos\nsystem\nq\x00.");
        assert_eq!(e.to_string(), "byte 2, opcode GLOBAL (0x63): global os.system is not allowed (only _codecs.encode and bytes, which Python 3 uses for bytes under protocol 2)");
        assert_eq!(err(b"\x80\x02}.").to_string(), "byte 2, opcode EMPTY_DICT (0x7d): opcode not supported (verification files hold only lists, tuples, bools and byte strings)");
        assert_eq!(err(b"\x80\x06.").problem, Problem::UnsupportedProtocol(6));
    }

    #[test]
    fn a_list_containing_itself_is_refused() {
        let e = err(b"]q\x00h\x00a.");
        assert_eq!((e.offset, e.problem), (0, Problem::Cyclic));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut data = b"]".repeat(MAX_DEPTH + 1);
        data.extend(b"a".repeat(MAX_DEPTH));
        data.push(STOP);
        assert_eq!(err(&data).problem, Problem::TooDeep);
        // One level less is fine.
        let mut data = b"]".repeat(MAX_DEPTH);
        data.extend(b"a".repeat(MAX_DEPTH - 1));
        data.push(STOP);
        parse(&data).unwrap();
    }

    #[test]
    fn marks_protect_the_objects_below_them() {
        // TUPLE2 right after a MARK may not consume the objects under it.
        let e = err(b"\x88\x89(\x86.");
        assert_eq!(
            e.problem,
            Problem::StackUnderflow {
                needed: 2,
                found: 0
            }
        );
        assert_eq!(err(b"\x88e.").problem, Problem::NoMark);
    }

    #[test]
    fn stop_needs_exactly_one_object_and_nothing_after() {
        assert_eq!(
            err(b"\x88\x88.").problem,
            Problem::UnbalancedStop { items: 2, marks: 0 }
        );
        assert_eq!(err(b"\x88.\x00").problem, Problem::TrailingBytes(1));
    }

    #[test]
    fn codecs_encode_makes_latin1_bytes() {
        let value = parse(
            b"\x80\x02c_codecs\nencode\nX\x04\x00\x00\x00a\xc3\xbfbX\x06\x00\x00\x00latin1\x86R.",
        )
        .unwrap();
        assert_eq!(value.kind, Kind::Bytes(Arc::from(&b"a\xffb"[..])));
        let e = err(b"c_codecs\nencode\nX\x02\x00\x00\x00\xc4\x80X\x06\x00\x00\x00latin1\x86R.");
        assert_eq!(e.problem, Problem::NotLatin1(0x100));
        let e = err(b"c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.");
        assert_eq!(e.to_string(), "byte 33, opcode REDUCE (0x52): _codecs.encode called with (str, str); expected (str, 'latin1')");
        let value = parse(b"c__builtin__\nbytes\n)R.").unwrap();
        assert_eq!(value.kind, Kind::Bytes(Arc::from(&[][..])));
    }

    #[test]
    fn a_bare_callable_is_not_a_value() {
        assert_eq!(
            err(b"cbuiltins\nbytes\n.").problem,
            Problem::CallableAsValue("bytes")
        );
    }

    #[test]
    fn global_operands_end_with_newlines() {
        assert_eq!(err(b"c_codecs\nencode").problem, Problem::UnterminatedLine);
    }

    #[test]
    fn the_number_of_opcodes_is_bounded() {
        // A list of 2^20 bools: one byte each, but tens of bytes each in memory.
        let mut data = b"](".to_vec();
        data.extend(std::iter::repeat_n(NEWTRUE, 1 << 20));
        data.extend(b"e.");
        let e = err(&data);
        assert!(e.to_string().contains("more than 1048576 opcodes"), "{e}");
        // One opcode fewer than the bound is fine.
        let mut data = b"](".to_vec();
        data.extend(std::iter::repeat_n(NEWTRUE, (1 << 20) - 4));
        data.extend(b"e.");
        parse(&data).unwrap();
    }

    #[test]
    fn memo_keys_must_exist() {
        assert_eq!(err(b"h\x07.").problem, Problem::MissingMemo(7));
    }
}
