//! A line reader with a bound on line length.

use std::io::{BufRead, ErrorKind};

/// Lines longer than this are skipped (and reported as malformed) instead of buffered.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads `\n`-terminated lines into a reused buffer, never holding more than [`MAX_LINE_BYTES`]
/// (or the limit given) of one line.
pub struct LineReader<R> {
    inner: R,
    limit: usize,
    /// 1-based number of the line last returned.
    pub line_no: u64,
}

/// One line as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line, without its newline (and without a trailing `\r`).
    Ok,
    /// The line was longer than the limit; its bytes were skipped.
    TooLong,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_LINE_BYTES)
    }

    pub fn with_limit(inner: R, limit: usize) -> Self {
        LineReader {
            inner,
            limit,
            line_no: 0,
        }
    }

    /// Reads the next line into `buf` (cleared first). `Ok(None)` at the end of input.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
        buf.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (part, done) = match memchr(chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            if !too_long {
                if buf.len() + part.len() > self.limit {
                    too_long = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(part);
                }
            }
            let consumed = done.unwrap_or(chunk.len());
            self.inner.consume(consumed);
            if done.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.line_no += 1;
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(Some(if too_long { Line::TooLong } else { Line::Ok }))
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let data = b"ab\r\n0123456789\nlast";
        let mut r = LineReader::with_limit(&data[..], 5);
        let mut buf = Vec::new();
        assert_eq!(r.next_line(&mut buf).unwrap(), Some(Line::Ok));
        assert_eq!(buf, b"ab");
        assert_eq!(r.next_line(&mut buf).unwrap(), Some(Line::TooLong));
        assert_eq!(r.next_line(&mut buf).unwrap(), Some(Line::Ok));
        assert_eq!(buf, b"last");
        assert_eq!(r.line_no, 3);
        assert_eq!(r.next_line(&mut buf).unwrap(), None);
    }
}
