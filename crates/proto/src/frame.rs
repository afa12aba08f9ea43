//! The frame header codec (RFC 6455 §5.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```

use crate::error::{LimitError, ProtocolError};

/// The largest header: 2 bytes, a 64-bit length and a masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload length accepted in a header: 2^53 - 1, as `ws`.
pub const MAX_FRAME_LEN: u64 = (1 << 53) - 1;

/// A frame opcode (RFC 6455 §5.2, §11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for a 4-bit value; `None` for the reserved values.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        Some(match value {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// RSV1 (used by permessage-deflate).
    pub rsv1: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the start of `buf`.
    ///
    /// Returns the header and its length in bytes, or `Ok(None)` if `buf` holds less than
    /// a whole header. Checks what the header alone can show: reserved bits (RSV1 is left
    /// to the caller, which knows the extensions), reserved opcodes, control frame rules
    /// (§5.5) and the 64-bit length limit.
    ///
    /// # Errors
    /// The [`ProtocolError`] or [`LimitError`] the header shows.
    #[inline]
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        if b0 & 0x30 != 0 {
            return Err(ProtocolError::UnexpectedRsv23.into());
        }
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(HeaderError::Protocol(
            ProtocolError::InvalidOpcode(b0 & 0x0f),
        ))?;
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::ExpectedFin.into());
            }
            if len7 > 125 {
                return Err(ProtocolError::InvalidControlPayloadLength.into());
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len > MAX_FRAME_LEN {
                    return Err(LimitError::FrameLengthUnsupported.into());
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(b) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([b[0], b[1], b[2], b[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv1,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encodes this header into `out`, returning the number of bytes written (2 to 14).
    #[inline]
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | (u8::from(self.rsv1) << 6) | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }
}

/// What a header alone can show to be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// A protocol violation.
    Protocol(ProtocolError),
    /// A limit exceeded.
    Limit(LimitError),
}

impl From<ProtocolError> for HeaderError {
    fn from(e: ProtocolError) -> Self {
        HeaderError::Protocol(e)
    }
}

impl From<LimitError> for HeaderError {
    fn from(e: LimitError) -> Self {
        HeaderError::Limit(e)
    }
}

impl From<HeaderError> for crate::Error {
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::Protocol(e) => e.into(),
            HeaderError::Limit(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(header: FrameHeader) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut buf);
        for short in 0..n {
            assert_eq!(
                FrameHeader::decode(&buf[..short]),
                Ok(None),
                "{short} of {n} bytes"
            );
        }
        assert_eq!(FrameHeader::decode(&buf[..n]), Ok(Some((header, n))));
    }

    // RFC 6455 §5.2: 7, 16 and 64-bit lengths, masked and not.
    #[test]
    fn header_roundtrip_all_length_forms() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, MAX_FRAME_LEN] {
            for mask in [None, Some([1, 2, 3, 4])] {
                for opcode in [OpCode::Text, OpCode::Binary, OpCode::Continuation] {
                    roundtrip(FrameHeader {
                        fin: len % 2 == 0,
                        rsv1: false,
                        opcode,
                        mask,
                        payload_len: len,
                    });
                }
            }
        }
        roundtrip(FrameHeader {
            fin: true,
            rsv1: true,
            opcode: OpCode::Ping,
            mask: None,
            payload_len: 125,
        });
    }

    #[test]
    fn rfc_examples() {
        // A single-frame unmasked text message "Hello".
        let (h, n) = FrameHeader::decode(&[0x81, 0x05]).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.payload_len, n),
            (true, OpCode::Text, 5, 2)
        );
        // 256 bytes binary message in a single unmasked frame.
        let (h, n) = FrameHeader::decode(&[0x82, 0x7E, 0x01, 0x00])
            .unwrap()
            .unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
    }

    // RFC 6455 §5.2, §5.5: what the header alone rejects.
    #[test]
    fn header_violations() {
        let err = |b: &[u8]| FrameHeader::decode(b).unwrap_err();
        assert_eq!(err(&[0xa1, 0]), ProtocolError::UnexpectedRsv23.into());
        assert_eq!(err(&[0x91, 0]), ProtocolError::UnexpectedRsv23.into());
        assert_eq!(err(&[0x83, 0]), ProtocolError::InvalidOpcode(3).into());
        assert_eq!(err(&[0x8b, 0]), ProtocolError::InvalidOpcode(0xb).into());
        assert_eq!(err(&[0x09, 0]), ProtocolError::ExpectedFin.into());
        assert_eq!(
            err(&[0x89, 126]),
            ProtocolError::InvalidControlPayloadLength.into()
        );
        let mut huge = [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0];
        huge[2] = 0x80;
        assert_eq!(err(&huge), LimitError::FrameLengthUnsupported.into());
        huge[2] = 0;
        huge[3] = 0x20; // 2^53
        assert_eq!(err(&huge), LimitError::FrameLengthUnsupported.into());
    }
}
