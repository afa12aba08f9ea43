//! Incremental UTF-8 validation (RFC 6455 §8.1).
//!
//! A text message may arrive in many frames, and a frame in many reads; a code point can
//! be cut anywhere. [`Utf8Validator`] checks bytes as they arrive and fails on the first
//! byte that can never become valid UTF-8, so an invalid message is rejected before its
//! end arrives ("fail fast", Autobahn 6.4.x). The bulk of the work is simdutf8.

/// Validates a UTF-8 byte stream fed in pieces.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    /// The bytes of a code point cut at the end of the previous piece (at most 3).
    partial: [u8; 4],
    partial_len: u8,
}

/// The input can never be valid UTF-8, whatever follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next piece of the stream.
    ///
    /// # Errors
    /// [`InvalidUtf8`] as soon as the bytes seen so far cannot start valid UTF-8.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            // Complete the code point cut at the end of the previous piece.
            let have = self.partial_len as usize;
            let width = utf8_width(self.partial[0]);
            let take = (width - have).min(input.len());
            self.partial[have..have + take].copy_from_slice(&input[..take]);
            let filled = have + take;
            match std::str::from_utf8(&self.partial[..filled]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.partial_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            input = &input[take..];
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &input[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Ends the stream: fails if a code point was left incomplete.
    ///
    /// # Errors
    /// [`InvalidUtf8`] when the stream ends inside a code point.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    /// Whether a code point is cut at the current position.
    pub fn is_incomplete(&self) -> bool {
        self.partial_len > 0
    }
}

/// The length of the sequence a lead byte announces (1 for bytes that cannot lead, so
/// that the validator reports them at once).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 1,
    }
}

/// Validates a complete buffer (close reasons, whole messages).
pub fn validate(input: &[u8]) -> Result<(), InvalidUtf8> {
    simdutf8::basic::from_utf8(input)
        .map(|_| ())
        .map_err(|_| InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(data: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts {
            v.feed(&data[start..cut])?;
            start = cut;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn valid_text_split_everywhere() {
        let text = "κόσμε – 𝄞 ascii € ok".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(feed_split(text, &[a, b]), Ok(()), "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn invalid_text_split_everywhere_agrees_with_std() {
        let cases: &[&[u8]] = &[
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"ab\xe0\x80\x80",
            b"\xff",
            b"\xe2\x82",
        ];
        for data in cases {
            assert!(std::str::from_utf8(data).is_err());
            for a in 0..=data.len() {
                for b in a..=data.len() {
                    assert_eq!(
                        feed_split(data, &[a, b]),
                        Err(InvalidUtf8),
                        "{data:?} {a} {b}"
                    );
                }
            }
        }
    }

    // Autobahn 6.4.x: the error must show before the message ends.
    #[test]
    fn fails_fast_on_the_first_impossible_byte() {
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        assert_eq!(v.feed(b"\xf4\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        v.feed(b"\xed").unwrap();
        assert_eq!(
            v.feed(b"\xa0"),
            Err(InvalidUtf8),
            "surrogate rejected at its second byte"
        );
    }

    #[test]
    fn incomplete_at_end_fails_on_finish() {
        let mut v = Utf8Validator::new();
        v.feed(b"a\xe2\x82").unwrap();
        assert!(v.is_incomplete());
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
