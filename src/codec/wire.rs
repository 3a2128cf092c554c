//! Wire primitives shared by every packet: variable byte integers, two-byte integers, UTF-8
//! strings and binary data. Reading slices the frame's `Bytes` (no copy); every rule the
//! specification puts on a string (valid UTF-8, no U+0000) is checked here, once.

use bytes::{Buf, BufMut, Bytes};
use bytestring::ByteString;

use super::DecodeError;

/// The largest value a variable byte integer can hold (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Reads fields out of one packet's body; every read checks the bytes are there.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, used) = match read_varint(&self.buf)? {
            Some(v) => v,
            None => return Err(DecodeError::Truncated),
        };
        self.buf.advance(used);
        Ok(value)
    }

    /// Takes the next `n` bytes as a slice of the frame.
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Everything left: a payload.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    pub fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        to_string(raw)
    }

    /// Splits off a sub-reader of `len` bytes (a property block).
    pub fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::PropertyLengthOverrun);
        }
        Ok(Reader::new(self.buf.split_to(len)))
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Validates an MQTT UTF-8 string: well-formed UTF-8 (so no surrogates) and no U+0000.
pub fn to_string(raw: Bytes) -> Result<ByteString, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
}

/// Reads a variable byte integer from the start of `buf`: `Ok(None)` when more bytes are
/// needed, the value and the bytes it used otherwise.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalLength);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::RemainingLengthTooLong)
}

pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(buf: &mut impl BufMut, mut value: usize) {
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// The longest string or binary field a packet can carry (a two-byte length).
pub const MAX_FIELD: usize = u16::MAX as usize;

/// Writes a length-prefixed field. Callers never pass more than [`MAX_FIELD`] bytes: fields
/// read from the wire cannot exceed it, and what the broker makes itself (`$SYS` topics) is
/// checked against it where it is made.
pub fn put_binary(buf: &mut impl BufMut, data: &[u8]) {
    debug_assert!(data.len() <= MAX_FIELD, "field of {} bytes", data.len());
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

/// Bytes a length-prefixed string or binary field takes on the wire.
pub fn field_len(data: &[u8]) -> usize {
    2 + data.len()
}
