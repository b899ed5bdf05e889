//! Child output is bytes; the log API carries UTF-8 text. [`Utf8Stream`] decodes a byte
//! stream read in arbitrary pieces, keeping a character split across two reads whole
//! and replacing invalid bytes with U+FFFD, so what is spooled (and later stored by the
//! control plane) is valid UTF-8 whose byte offsets never move afterwards.

/// A streaming, lossy UTF-8 decoder.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character whose remaining bytes have not arrived yet (at most 3).
    partial: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes `bytes`, continuing what earlier calls left unfinished. A trailing
    /// incomplete character is held back until the next call or [`Utf8Stream::finish`].
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.partial);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len());
        let mut rest: &[u8] = &input;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid_up_to` marks a prefix that is valid UTF-8, so this never falls back.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete character at the end: wait for its tail.
                            self.partial = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// Ends the stream: a character left incomplete becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.partial.is_empty() {
            String::new()
        } else {
            self.partial.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

/// The largest `n <= max` such that `bytes[..n]` ends on a character boundary of the
/// valid UTF-8 text `bytes` (a prefix of one character is never cut off).
pub fn floor_char_boundary(bytes: &[u8], max: usize) -> usize {
    if max >= bytes.len() {
        return bytes.len();
    }
    let mut n = max;
    // Continuation bytes are 0b10xx_xxxx; a boundary is before any other byte.
    while n > 0 && (bytes[n] & 0b1100_0000) == 0b1000_0000 {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_reads_stay_whole() {
        let text = "héllo €uro 𝄞!";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut stream = Utf8Stream::default();
            let mut out = stream.push(&bytes[..cut]);
            out.push_str(&stream.push(&bytes[cut..]));
            out.push_str(&stream.finish());
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        let out = stream.push(b"a\xffb\xc3");
        assert_eq!(out, "a\u{fffd}b");
        assert_eq!(
            stream.finish(),
            "\u{fffd}",
            "an unfinished character at the end"
        );
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn chunk_ends_fall_on_character_boundaries() {
        let text = "a€b".as_bytes(); // € is 3 bytes at 1..4
        assert_eq!(floor_char_boundary(text, 0), 0);
        assert_eq!(floor_char_boundary(text, 1), 1);
        assert_eq!(floor_char_boundary(text, 2), 1);
        assert_eq!(floor_char_boundary(text, 3), 1);
        assert_eq!(floor_char_boundary(text, 4), 4);
        assert_eq!(floor_char_boundary(text, 99), 5);
    }
}
