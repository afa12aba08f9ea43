//! `FrameHeader::decode` on arbitrary bytes: a documented error, a need for more bytes,
//! or a header that `encode` writes back and that decodes again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::frame::{FrameHeader, HeaderError, OpCode, MAX_FRAME_LEN, MAX_HEADER_LEN};
use sockeye_proto::{LimitError, ProtocolError};

fuzz_target!(|data: &[u8]| {
    let (header, n) = match FrameHeader::decode(data) {
        Ok(Some(decoded)) => decoded,
        Ok(None) => {
            assert!(data.len() < MAX_HEADER_LEN);
            return;
        }
        Err(error) => {
            check_error(data, error);
            return;
        }
    };
    assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
    assert!(header.payload_len <= MAX_FRAME_LEN);
    if header.opcode.is_control() {
        assert!(header.fin && header.payload_len <= 125);
    }
    // Every shorter prefix asks for more bytes.
    for short in 0..n {
        assert_eq!(FrameHeader::decode(&data[..short]), Ok(None));
    }

    let mut out = [0u8; MAX_HEADER_LEN];
    let m = header.encode(&mut out);
    assert_eq!(FrameHeader::decode(&out[..m]), Ok(Some((header, m))));
    // The encoder uses the shortest length form (RFC 6455 §5.2); a sender may not, so the
    // bytes match exactly when the input used the shortest form too.
    let minimal = match data[1] & 0x7f {
        126 => header.payload_len >= 126,
        127 => header.payload_len > 0xffff,
        _ => true,
    };
    assert!(m <= n);
    assert_eq!(minimal, m == n);
    if minimal {
        assert_eq!(&out[..m], &data[..n]);
    }
});

fn check_error(data: &[u8], error: HeaderError) {
    let (b0, b1) = (data[0], data[1]);
    let control = b0 & 0x08 != 0;
    match error {
        HeaderError::Protocol(ProtocolError::UnexpectedRsv23) => assert_ne!(b0 & 0x30, 0),
        HeaderError::Protocol(ProtocolError::InvalidOpcode(op)) => {
            assert_eq!(op, b0 & 0x0f);
            assert_eq!(OpCode::from_u8(op), None);
        }
        HeaderError::Protocol(ProtocolError::ExpectedFin) => assert!(control && b0 & 0x80 == 0),
        HeaderError::Protocol(ProtocolError::InvalidControlPayloadLength) => {
            assert!(control && b1 & 0x7f > 125)
        }
        HeaderError::Limit(LimitError::FrameLengthUnsupported) => {
            assert_eq!(b1 & 0x7f, 127);
            let len = u64::from_be_bytes(data[2..10].try_into().unwrap());
            assert!(len > MAX_FRAME_LEN);
        }
        other => panic!("undocumented header error {other:?}"),
    }
}
