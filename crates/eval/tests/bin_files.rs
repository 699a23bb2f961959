//! Verification `.bin` files as Python 2 and Python 3 write them, the writer,
//! and malformed files.

mod common;

use std::path::Path;

use common::{python3, TempDir};
use lgaf_eval::pickle::Writer;
use lgaf_eval::{write_bin, VerificationBin};

/// An image of a Python 2 `bins` list: new bytes, or the same `str` object
/// as an earlier image (which pickle writes as a memo reference).
enum Image<'a> {
    New(&'a [u8]),
    SameAs(usize),
}

/// `pickle.dumps((bins, issame_list), 2)` as Python 2.7's pickle.py writes
/// it, opcode by opcode: every list, string and the tuple are memoised
/// (BINPUT, or LONG_BINPUT from key 256 on), strings are SHORT_BINSTRING or
/// BINSTRING, lists are filled in batches of 1000 (MARK ... APPENDS, or a
/// lone APPEND), bools are NEWTRUE / NEWFALSE.
fn python2_pickle(images: &[Image], issame: &[bool]) -> Vec<u8> {
    struct Out {
        bytes: Vec<u8>,
        memo: u32,
    }
    impl Out {
        fn put(&mut self) {
            match u8::try_from(self.memo) {
                Ok(key) => self.bytes.extend([b'q', key]),
                Err(_) => {
                    self.bytes.push(b'r');
                    self.bytes.extend(self.memo.to_le_bytes());
                }
            }
            self.memo += 1;
        }
        fn get(&mut self, key: u32) {
            match u8::try_from(key) {
                Ok(key) => self.bytes.extend([b'h', key]),
                Err(_) => {
                    self.bytes.push(b'j');
                    self.bytes.extend(key.to_le_bytes());
                }
            }
        }
        fn batched<T>(&mut self, items: &[T], mut save: impl FnMut(&mut Self, &T)) {
            self.bytes.push(b']');
            self.put();
            for batch in items.chunks(1000) {
                if batch.len() == 1 {
                    save(self, &batch[0]);
                    self.bytes.push(b'a');
                } else {
                    self.bytes.push(b'(');
                    batch.iter().for_each(|item| save(self, item));
                    self.bytes.push(b'e');
                }
            }
        }
    }
    let mut out = Out {
        bytes: vec![0x80, 2],
        memo: 0,
    };
    let mut keys = Vec::new();
    out.batched(images, |out, image| match image {
        Image::New(data) => {
            match u8::try_from(data.len()) {
                Ok(len) => out.bytes.extend([b'U', len]),
                Err(_) => {
                    out.bytes.push(b'T');
                    out.bytes.extend((data.len() as i32).to_le_bytes());
                }
            }
            out.bytes.extend(*data);
            keys.push(out.memo);
            out.put();
        }
        Image::SameAs(earlier) => {
            let key = keys[*earlier];
            keys.push(key);
            out.get(key);
        }
    });
    out.batched(issame, |out, &same| {
        out.bytes.push(if same { 0x88 } else { 0x89 })
    });
    out.bytes.push(0x86);
    out.put();
    out.bytes.push(b'.');
    out.bytes
}

#[test]
fn reads_a_python2_protocol2_file() {
    let long = [b'x'; 300];
    let images = [
        Image::New(b"\xff\xd8ab"),
        Image::New(&long),
        Image::SameAs(0),
        Image::New(b"\x89PNG"),
    ];
    let data = python2_pickle(&images, &[true, false]);
    // What Python 2.7.18 writes for pickle.dumps(([x, 'x' * 300, x, '\x89PNG'],
    // [True, False]), 2) with x = '\xff\xd8ab'.
    let python27 = [
        &b"\x80\x02]q\x00(U\x04\xff\xd8abq\x01T,\x01\x00\x00"[..],
        &long,
        b"q\x02h\x01U\x04\x89PNGq\x03e]q\x04(\x88\x89e\x86q\x05.",
    ]
    .concat();
    assert_eq!(data, python27);

    let bin = VerificationBin::decode(&data, Path::new("lfw.bin")).unwrap();
    assert_eq!(
        bin.images,
        [
            b"\xff\xd8ab".to_vec(),
            long.to_vec(),
            b"\xff\xd8ab".to_vec(),
            b"\x89PNG".to_vec()
        ]
    );
    assert_eq!(bin.issame, [true, false]);
    assert_eq!(bin.pairs(), 2);
}

#[test]
fn reads_long_memo_keys_and_batches() {
    // 1100 images: memo keys pass 255 (LONG_BINPUT), a repeat of image 700
    // is a LONG_BINGET, and the list takes two APPENDS batches.
    let payloads: Vec<Vec<u8>> = (0..1099u32)
        .map(|i| i.to_le_bytes().repeat(1 + i as usize % 80))
        .collect();
    let mut images: Vec<Image> = payloads.iter().map(|p| Image::New(p)).collect();
    images.push(Image::SameAs(700));
    let issame: Vec<bool> = (0..550).map(|i| i % 4 == 1).collect();
    let data = python2_pickle(&images, &issame);
    // Key 0 is the list, image k has key k + 1: 701 = 2 * 256 + 189.
    assert!(
        data.windows(5).any(|w| w == [b'j', 189, 2, 0, 0]),
        "LONG_BINGET of key 701"
    );

    let bin = VerificationBin::decode(&data, Path::new("agedb_30.bin")).unwrap();
    assert_eq!(bin.images.len(), 1100);
    assert_eq!(bin.images[..1099], payloads[..]);
    assert_eq!(bin.images[1099], payloads[700]);
    assert_eq!(bin.issame, issame);
}

/// Images of the Python-3 tests: 41 of varied lengths (the first empty), one of them larger
/// than a pickle frame (64 KiB), so protocols 4 and 5 write frames.
const PYTHON_IMAGES: &str =
    "[bytes([i % 256]) * (i * 37 % 700) for i in range(41)] + [bytes(range(256)) * 400]";
const PYTHON_ISSAME: &str = "[i % 3 == 0 for i in range(20)] + [True]";

fn expected_images() -> Vec<Vec<u8>> {
    let mut images: Vec<Vec<u8>> = (0..41usize).map(|i| vec![i as u8; i * 37 % 700]).collect();
    images.push((0..=255u8).cycle().take(256 * 400).collect());
    images
}

fn expected_issame() -> Vec<bool> {
    (0..20).map(|i| i % 3 == 0).chain([true]).collect()
}

#[test]
fn reads_files_written_by_python3() {
    let dir = TempDir::new("python3");
    // Protocol 2 writes bytes as _codecs.encode(text, 'latin1') (and b'' as
    // bytes()); 3 adds BINBYTES; 4 and 5 add FRAME and MEMOIZE.
    for protocol in 2..=5 {
        let path = dir.join(&format!("protocol{protocol}.bin"));
        let script = format!(
            "import pickle, sys\n\
             with open(sys.argv[1], 'wb') as f:\n    \
                 pickle.dump(({PYTHON_IMAGES}, {PYTHON_ISSAME}), f, protocol={protocol})"
        );
        python3(&script, &path);
        let bin =
            VerificationBin::read(&path).unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));
        assert_eq!(bin.images, expected_images(), "protocol {protocol}");
        assert_eq!(bin.issame, expected_issame(), "protocol {protocol}");
    }
}

#[test]
fn python3_loads_what_write_bin_writes() {
    let dir = TempDir::new("write");
    let path = dir.join("written.bin");
    write_bin(&path, &expected_images(), &expected_issame()).unwrap();
    let script = format!(
        "import pickle, sys\n\
         with open(sys.argv[1], 'rb') as f:\n    data = pickle.load(f)\n\
         assert type(data) is tuple and len(data) == 2, type(data)\n\
         images, issame = data\n\
         assert type(images) is list and all(type(i) is bytes for i in images)\n\
         assert type(issame) is list and all(type(s) is bool for s in issame)\n\
         assert images == {PYTHON_IMAGES}, 'images differ'\n\
         assert issame == {PYTHON_ISSAME}, 'issame differs'"
    );
    python3(&script, &path);
    // And it reads back.
    let bin = VerificationBin::read(&path).unwrap();
    assert_eq!(
        (bin.images, bin.issame),
        (expected_images(), expected_issame())
    );
}

#[test]
fn write_bin_needs_two_images_per_pair() {
    let dir = TempDir::new("pairs");
    let path = dir.join("odd.bin");
    let e = write_bin(&path, &[b"a", b"b", b"c"], &[true]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write {}: 3 images for 1 pairs; expected 2",
            path.display()
        )
    );
}

/// `error text` of reading `data` as `name`.
fn read_error(data: &[u8], name: &str) -> String {
    VerificationBin::decode(data, Path::new(name))
        .unwrap_err()
        .to_string()
}

/// A protocol 4 pickle built by `build`.
fn pickle_of(build: impl FnOnce(&mut Writer<Vec<u8>>) -> std::io::Result<()>) -> Vec<u8> {
    let mut w = Writer::new(Vec::new()).unwrap();
    build(&mut w).unwrap();
    w.finish().unwrap()
}

fn images_and_flags(images: usize, flags: usize) -> Vec<u8> {
    let images: Vec<Vec<u8>> = (0..images).map(|i| vec![i as u8; 300]).collect();
    let flags = vec![true; flags];
    pickle_of(|w| {
        w.tuple(|w| {
            w.list(&images, |w, i| w.bytes(i))?;
            w.list(&flags, |w, &f| w.bool(f))
        })
    })
}

#[test]
fn truncated_files_name_the_opcode_and_offset() {
    let data = images_and_flags(2, 1);
    // PROTO 4 (2 bytes), MARK, EMPTY_LIST, MARK, then BINBYTES at byte 5:
    // opcode, 4 length bytes, 300 bytes of which 100 survive.
    let e = read_error(&data[..110], "cut.bin");
    assert_eq!(e, "invalid pickle cut.bin: byte 5, opcode BINBYTES (0x42): truncated: needs 300 more bytes, 100 remain");
    let e = read_error(&data[..data.len() - 1], "cut.bin");
    assert_eq!(
        e,
        format!(
            "invalid pickle cut.bin: byte {}: the data ends without a STOP opcode",
            data.len() - 1
        )
    );
}

#[test]
fn unknown_opcodes_are_refused() {
    let e = read_error(b"\x80\x02\xff.", "x.bin");
    assert_eq!(e, "invalid pickle x.bin: byte 2, opcode unknown opcode (0xff): opcode not supported (verification files hold only lists, tuples, bools and byte strings)");
    // A numpy issame array: numpy's reconstructor is never called.
    let e = read_error(
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00.",
        "np.bin",
    );
    assert_eq!(e, "invalid pickle np.bin: byte 2, opcode GLOBAL (0x63): numpy object numpy.core.multiarray._reconstruct: numpy arrays are not supported, store the values as a Python list (e.g. issame.tolist())");
}

#[test]
fn the_layout_must_be_pairs_of_images_and_flags() {
    let e = read_error(&images_and_flags(3, 1), "odd.bin");
    assert_eq!(e, "odd.bin: byte 5: bins: expected an even number of images (pairs are consecutive), found 3 images");

    let e = read_error(&images_and_flags(4, 1), "short.bin");
    let tuple_at = images_and_flags(4, 1).len() - 2;
    assert_eq!(
        e,
        format!("short.bin: byte {tuple_at}: (bins, issame_list): expected 2 images per issame flag, 2 for 1 flags, found 4 images")
    );

    let e = read_error(&images_and_flags(0, 0), "empty.bin");
    assert!(
        e.starts_with("empty.bin: byte ")
            && e.ends_with("expected at least one pair, found no images and no flags"),
        "{e}"
    );

    let list = pickle_of(|w| w.list(&[true, false], |w, &b| w.bool(b)));
    let e = read_error(&list, "list.bin");
    assert_eq!(e, "list.bin: byte 2: the top-level object: expected a tuple (bins, issame_list), found a list of 2");

    let triple =
        pickle_of(|w| w.tuple(|w| (0..3).try_for_each(|_| w.list(&[0u8; 0], |_, _| Ok(())))));
    let e = read_error(&triple, "triple.bin");
    // The offset is that of the TUPLE opcode, after MARK and three lists.
    assert_eq!(e, "triple.bin: byte 6: the top-level object: expected a tuple (bins, issame_list), found a tuple of 3");

    let not_list = pickle_of(|w| {
        w.tuple(|w| {
            w.bytes(b"img")?;
            w.list(&[true], |w, &b| w.bool(b))
        })
    });
    let e = read_error(&not_list, "flat.bin");
    assert_eq!(
        e,
        "flat.bin: byte 3: bins (the first item): expected a list, found bytes"
    );

    let bad_image = pickle_of(|w| {
        w.tuple(|w| {
            w.list(&[true, false], |w, &b| w.bool(b))?;
            w.list(&[true], |w, &b| w.bool(b))
        })
    });
    let e = read_error(&bad_image, "bools.bin");
    assert_eq!(e, "bools.bin: byte 5: image 0: expected bytes, found bool");

    let bad_flag = pickle_of(|w| {
        w.tuple(|w| {
            w.list(&[b"a", b"b"], |w, i| w.bytes(*i))?;
            w.list(&[b"yes"], |w, i| w.bytes(*i))
        })
    });
    let e = read_error(&bad_flag, "flags.bin");
    assert_eq!(
        e,
        "flags.bin: byte 13: issame flag 0: expected bool, found bytes"
    );
}

#[test]
fn missing_files_are_named() {
    let dir = TempDir::new("missing");
    let path = dir.join("absent.bin");
    let e = VerificationBin::read(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read {}: ", path.display())),
        "{e}"
    );
}

// ---- inputs that would decode to far more than they hold ----

/// CRC-32 (IEEE) as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid greyscale PNG whose IHDR declares `width`x`height` and whose IDAT holds the
/// filter byte and pixels of one row (`pixel` repeated): the whole image for 1x1, a
/// few bytes announcing a huge image otherwise.
fn png(width: u32, height: u32, pixel: u8) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let row: Vec<u8> = [0]
        .into_iter()
        .chain([pixel; 8])
        .take(1 + width.min(8) as usize)
        .collect();
    // zlib with one stored block.
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend((row.len() as u16).to_le_bytes());
    zlib.extend((!(row.len() as u16)).to_le_bytes());
    zlib.extend(&row);
    let (a, b) = row.iter().fold((1u32, 0u32), |(a, b), &x| {
        let a = (a + u32::from(x)) % 65521;
        (a, (b + a) % 65521)
    });
    zlib.extend(((b << 16) | a).to_be_bytes());
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A real 8x8 baseline JPEG whose SOF0 is patched to declare `width`x`height`: the
/// headers are whole, as a bomb's would be, and only the size lies.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut bytes)
        .encode(&[128u8; 8 * 8 * 3], 8, 8, image::ExtendedColorType::Rgb8)
        .unwrap();
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has an SOF0 marker");
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

#[test]
fn an_image_declaring_a_huge_size_is_refused_naming_it_and_the_bound() {
    let cases = [
        (png(10_000, 10_000, 0), "PNG", "10000x10000"),
        (jpeg_declaring(5_000, 5_000), "JPEG", "5000x5000"),
        (png(4_097, 1, 0), "PNG", "4097x1"),
    ];
    for (bomb, format, size) in cases {
        assert!(bomb.len() < 1000, "{} bytes", bomb.len());
        let images = [png(1, 1, 7), png(1, 1, 8), png(1, 1, 9), bomb];
        let data = pickle_of(|w| {
            w.tuple(|w| {
                w.list(&images, |w, i| w.bytes(i))?;
                w.list(&[true, false], |w, &b| w.bool(b))
            })
        });
        let e = read_error(&data, "bomb.bin");
        assert!(
            e.starts_with("bomb.bin: byte ")
                && e.contains("image 3")
                && e.contains(&format!("a {format} header declaring {size} pixels"))
                && e.contains("at most 4096x4096"),
            "{e}"
        );
    }
    // At the bound, and images whose header is not recognisable, are left to the decoder.
    let images = [
        png(4096, 4096, 0),
        png(1, 1, 0),
        b"\xff\xd8ab".to_vec(),
        b"x".to_vec(),
    ];
    let data = pickle_of(|w| {
        w.tuple(|w| {
            w.list(&images, |w, i| w.bytes(i))?;
            w.list(&[true, false], |w, &b| w.bool(b))
        })
    });
    VerificationBin::decode(&data, Path::new("ok.bin")).unwrap();
}

#[test]
fn many_tiny_images_that_would_decode_to_far_more_than_the_file_are_refused() {
    // 8000 distinct 1x1 PNGs of about 70 bytes each: a 600 KB file whose images decode
    // to 8000 112x112 RGB faces, 300 MB.
    let images: Vec<Vec<u8>> = (0..8000u32)
        .map(|i| {
            let mut image = png(1, 1, i as u8);
            // Distinct bytes (memo references to one image are refused separately).
            image.extend(i.to_le_bytes());
            image
        })
        .collect();
    let issame: Vec<bool> = (0..4000).map(|i| i % 2 == 0).collect();
    let data = pickle_of(|w| {
        w.tuple(|w| {
            w.list(&images, |w, i| w.bytes(i))?;
            w.list(&issame, |w, &b| w.bool(b))
        })
    });
    assert!(data.len() < 725_000, "{} bytes", data.len());
    let e = read_error(&data, "tiny.bin");
    assert!(
        e.starts_with("tiny.bin: byte ")
            && e.contains("8000 images that decode to 301056000 bytes")
            && e.contains("at most 67108864 bytes"),
        "{e}"
    );

    // The same images, fewer of them, are a valid file.
    let data = pickle_of(|w| {
        w.tuple(|w| {
            w.list(&images[..1000], |w, i| w.bytes(i))?;
            w.list(&issame[..500], |w, &b| w.bool(b))
        })
    });
    let bin = VerificationBin::decode(&data, Path::new("small.bin")).unwrap();
    assert_eq!(bin.pairs(), 500);
}
