//! MXNet's `IRHeader`: the fixed header at the front of every image record,
//! followed by optional extra labels and then the encoded image.

/// Bytes of `struct.pack('<IfQQ', flag, label, id, id2)`.
pub const IR_HEADER_LEN: usize = 24;

/// The largest integer that every smaller non-negative integer shares exact
/// f32 representation with; labels and keys stored in f32 stay below it.
pub const MAX_EXACT_F32_INTEGER: u32 = 1 << 24;

/// MXNet's `IRHeader(flag, label, id, id2)`. When `flag > 0` the record
/// carries `flag` extra f32 labels after the header, and `label` is 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IrHeader {
    pub flag: u32,
    pub label: f32,
    pub id: u64,
    pub id2: u64,
}

/// The label argument of [`pack`], as in MXNet's `recordio.pack`: a number is
/// stored in the header, an array after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IrLabel<'a> {
    Scalar(f32),
    Vector(&'a [f32]),
}

/// A payload split into its header, its extra labels and the bytes after
/// them (the encoded image).
#[derive(Debug, Clone, PartialEq)]
pub struct IrRecord<'a> {
    pub header: IrHeader,
    /// The `flag` extra labels; empty when `flag == 0`.
    pub labels: Vec<f32>,
    pub data: &'a [u8],
}

/// A payload shorter than the header, or than the labels its flag announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortPayload {
    /// e.g. "an IRHeader and 2 extra labels".
    pub what: String,
    pub needed: usize,
    pub found: usize,
}

impl<'a> IrRecord<'a> {
    /// Split a payload as MXNet's `recordio.unpack` does.
    pub fn parse(payload: &'a [u8]) -> Result<Self, ShortPayload> {
        let Some((fixed, rest)) = payload.split_first_chunk::<IR_HEADER_LEN>() else {
            return Err(ShortPayload {
                what: "an IRHeader".into(),
                needed: IR_HEADER_LEN,
                found: payload.len(),
            });
        };
        let word = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let dword = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        let header = IrHeader {
            flag: word(0),
            label: f32::from_bits(word(4)),
            id: dword(8),
            id2: dword(16),
        };

        // The flag comes from the file: a count that cannot be a length is
        // simply more than the payload holds.
        let labels_len = usize::try_from(header.flag)
            .ok()
            .and_then(|flag| flag.checked_mul(4))
            .unwrap_or(usize::MAX);
        if rest.len() < labels_len {
            return Err(ShortPayload {
                what: format!("an IRHeader and {} extra labels", header.flag),
                needed: labels_len.saturating_add(IR_HEADER_LEN),
                found: payload.len(),
            });
        }
        let (label_bytes, data) = rest.split_at(labels_len);
        let labels = label_bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self {
            header,
            labels,
            data,
        })
    }

    /// The label that names the record's class, read as insightface does:
    /// the header's `label` when there are no extra labels, else the first.
    pub fn class_label(&self) -> f32 {
        self.labels.first().copied().unwrap_or(self.header.label)
    }
}

/// The `id` field of a payload that holds a whole IRHeader, without parsing
/// the rest.
pub fn peek_id(payload: &[u8]) -> Option<u64> {
    let (fixed, _) = payload.split_first_chunk::<IR_HEADER_LEN>()?;
    let (id, _) = fixed[8..].split_first_chunk::<8>()?;
    Some(u64::from_le_bytes(*id))
}

/// Build a payload as MXNet's `recordio.pack(IRHeader(_, label, id, id2), data)`:
/// a scalar label gives flag 0; a vector gives flag = its length and a 0 in
/// the header's `label`.
///
/// # Panics
/// If a vector label has 2^32 or more entries (the flag is a u32).
pub fn pack(label: IrLabel<'_>, id: u64, id2: u64, data: &[u8]) -> Vec<u8> {
    let (flag, scalar, extra): (usize, f32, &[f32]) = match label {
        IrLabel::Scalar(value) => (0, value, &[]),
        IrLabel::Vector(values) => (values.len(), 0.0, values),
    };
    let flag = u32::try_from(flag).expect("an IRHeader flag counts fewer than 2^32 labels");
    let mut payload = Vec::with_capacity(IR_HEADER_LEN + 4 * extra.len() + data.len());
    payload.extend_from_slice(&flag.to_le_bytes());
    payload.extend_from_slice(&scalar.to_le_bytes());
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&id2.to_le_bytes());
    for value in extra {
        payload.extend_from_slice(&value.to_le_bytes());
    }
    payload.extend_from_slice(data);
    payload
}

/// `value` as a non-negative integer that an f32 holds exactly (an identity
/// index or a record key), or `None`.
pub fn exact_index(value: f32) -> Option<u32> {
    let in_range = (0.0..=MAX_EXACT_F32_INTEGER as f32).contains(&value);
    (in_range && value.fract() == 0.0).then_some(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_label_matches_struct_pack_layout() {
        let payload = pack(IrLabel::Scalar(3.0), 0x0102_0304_0506_0708, 9, b"jpg");
        let mut expected = Vec::new();
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&3.0f32.to_le_bytes());
        expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(b"jpg");
        assert_eq!(payload, expected);

        let record = IrRecord::parse(&payload).unwrap();
        assert_eq!(
            record.header,
            IrHeader {
                flag: 0,
                label: 3.0,
                id: 0x0102_0304_0506_0708,
                id2: 9
            }
        );
        assert!(record.labels.is_empty());
        assert_eq!(record.data, b"jpg");
        assert_eq!(record.class_label(), 3.0);
    }

    #[test]
    fn vector_label_sets_flag_and_zeroes_scalar() {
        let payload = pack(IrLabel::Vector(&[5.0, 8.0]), 1, 0, b"x");
        assert_eq!(payload.len(), IR_HEADER_LEN + 8 + 1);
        let record = IrRecord::parse(&payload).unwrap();
        assert_eq!(record.header.flag, 2);
        assert_eq!(record.header.label, 0.0);
        assert_eq!(record.labels, vec![5.0, 8.0]);
        assert_eq!(record.data, b"x");
        assert_eq!(record.class_label(), 5.0);
    }

    #[test]
    fn short_payloads_say_what_they_lack() {
        assert_eq!(
            IrRecord::parse(&[0; 23]).unwrap_err(),
            ShortPayload {
                what: "an IRHeader".into(),
                needed: 24,
                found: 23
            }
        );
        let mut payload = pack(IrLabel::Vector(&[1.0, 2.0, 3.0]), 0, 0, b"");
        payload.truncate(IR_HEADER_LEN + 8);
        assert_eq!(
            IrRecord::parse(&payload).unwrap_err(),
            ShortPayload {
                what: "an IRHeader and 3 extra labels".into(),
                needed: 36,
                found: 32
            }
        );
    }

    #[test]
    fn exact_index_accepts_only_representable_non_negative_integers() {
        assert_eq!(exact_index(0.0), Some(0));
        assert_eq!(exact_index(41.0), Some(41));
        assert_eq!(exact_index(16_777_216.0), Some(16_777_216));
        for bad in [-1.0, 0.5, f32::NAN, f32::INFINITY, 16_777_218.0] {
            assert_eq!(exact_index(bad), None, "{bad}");
        }
    }
}
