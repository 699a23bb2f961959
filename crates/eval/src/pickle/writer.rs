//! A protocol 4 pickle writer for lists, tuples, bools and bytes.
//!
//! It writes no memo entries and no frames (both are optional in protocol 4),
//! so every object is written in full where it appears.

use std::io::{self, Write};

use super::opcode::*;

/// Lists are appended in batches of this many items, as CPython does, which
/// keeps the unpickler's stack short.
const APPENDS_BATCH: usize = 1000;

/// Writes one pickled object to `out`: build it with the methods below, each
/// of which writes one object, then call [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Starts a protocol 4 pickle.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&[PROTO, 4])?;
        Ok(Writer { out })
    }

    pub fn bool(&mut self, value: bool) -> io::Result<()> {
        self.out
            .write_all(&[if value { NEWTRUE } else { NEWFALSE }])
    }

    /// A Python 3 `bytes` object.
    pub fn bytes(&mut self, data: &[u8]) -> io::Result<()> {
        let len = data.len();
        if let Ok(short) = u8::try_from(len) {
            self.out.write_all(&[SHORT_BINBYTES, short])?;
        } else if let Ok(medium) = u32::try_from(len) {
            self.out.write_all(&[BINBYTES])?;
            self.out.write_all(&medium.to_le_bytes())?;
        } else {
            self.out.write_all(&[BINBYTES8])?;
            self.out.write_all(&(len as u64).to_le_bytes())?;
        }
        self.out.write_all(data)
    }

    /// A list whose items `write_item` writes, one call per item.
    pub fn list<T>(
        &mut self,
        items: &[T],
        mut write_item: impl FnMut(&mut Self, &T) -> io::Result<()>,
    ) -> io::Result<()> {
        self.out.write_all(&[EMPTY_LIST])?;
        for batch in items.chunks(APPENDS_BATCH) {
            if let [item] = batch {
                write_item(self, item)?;
                self.out.write_all(&[APPEND])?;
            } else {
                self.out.write_all(&[MARK])?;
                for item in batch {
                    write_item(self, item)?;
                }
                self.out.write_all(&[APPENDS])?;
            }
        }
        Ok(())
    }

    /// A tuple of the objects that `write_items` writes.
    pub fn tuple(
        &mut self,
        write_items: impl FnOnce(&mut Self) -> io::Result<()>,
    ) -> io::Result<()> {
        self.out.write_all(&[MARK])?;
        write_items(self)?;
        self.out.write_all(&[TUPLE])
    }

    /// Ends the pickle and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[STOP])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pickle::{parse, Kind};

    fn kinds(values: &[crate::pickle::Value]) -> Vec<Kind> {
        values.iter().map(|v| v.kind.clone()).collect()
    }

    #[test]
    fn writes_what_the_unpickler_reads_back() {
        let images: Vec<Vec<u8>> = vec![vec![7; 3], vec![1; 300], Vec::new()];
        let flags: Vec<bool> = (0..2500).map(|i| i % 3 == 0).collect();
        let mut w = Writer::new(Vec::new()).unwrap();
        w.tuple(|w| {
            w.list(&images, |w, image| w.bytes(image))?;
            w.list(&flags, |w, &flag| w.bool(flag))
        })
        .unwrap();
        let data = w.finish().unwrap();

        let value = parse(&data).unwrap();
        let Kind::Tuple(parts) = &value.kind else {
            panic!("{value:?}")
        };
        let Kind::List(read_images) = &parts[0].kind else {
            panic!("{value:?}")
        };
        let expected: Vec<Kind> = images
            .iter()
            .map(|i| Kind::Bytes(Arc::from(&i[..])))
            .collect();
        assert_eq!(kinds(read_images), expected);
        let Kind::List(read_flags) = &parts[1].kind else {
            panic!("{value:?}")
        };
        let expected: Vec<Kind> = flags.iter().map(|&f| Kind::Bool(f)).collect();
        assert_eq!(kinds(read_flags), expected);
    }

    #[test]
    fn lengths_choose_the_shortest_bytes_opcode() {
        let encode = |len: usize| {
            let mut w = Writer::new(Vec::new()).unwrap();
            w.bytes(&vec![0; len]).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(encode(255)[2..4], [SHORT_BINBYTES, 255]);
        assert_eq!(encode(256)[2..7], [BINBYTES, 0, 1, 0, 0]);
    }
}
