//! The IBM Docker registry traces (Anwar et al., FAST'18).
//!
//! Each file is one JSON array of request objects. The files are large (hundreds of MB), so the
//! array is never parsed whole: a small scanner walks the bytes, cuts out one element at a time
//! (tracking strings and nesting so braces inside strings do not confuse it) and hands only that
//! element to serde. An element that does not parse is counted and skipped; a broken array
//! structure (a missing `[`, garbage between elements, a truncated file) ends that file with a
//! malformed record, since no later position can be trusted.

use std::io::{BufRead, ErrorKind};
use std::path::Path;

use serde::Deserialize;

use super::{
    http_event, EventSource, NumOrStr, Position, ReadOptions, ReadStats, Tally, TraceError,
};
use crate::event::{parse_rfc3339_us, Event};

/// Elements larger than this are skipped and reported (a request object is a few hundred bytes).
pub const MAX_ELEMENT_BYTES: usize = 1 << 20;

#[derive(Debug, Deserialize)]
struct IbmRecord {
    timestamp: String,
    #[serde(rename = "http.request.method")]
    method: String,
    #[serde(rename = "http.request.uri")]
    uri: String,
    #[serde(rename = "http.request.remoteaddr", default)]
    remoteaddr: Option<String>,
    #[serde(rename = "http.request.useragent", default)]
    #[allow(dead_code)] // parsed so a wrongly typed value is reported; not analysed yet
    useragent: Option<String>,
    #[serde(rename = "http.request.duration", default)]
    duration: Option<NumOrStr>,
    #[serde(rename = "http.response.status")]
    status: NumOrStr,
    #[serde(rename = "http.response.written", default)]
    written: Option<NumOrStr>,
    #[serde(default)]
    #[allow(dead_code)]
    host: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
}

fn parse_element(bytes: &[u8]) -> Result<Event, String> {
    let r: IbmRecord =
        serde_json::from_slice(bytes).map_err(|e| format!("not an ibm request object: {e}"))?;
    let time_us = parse_rfc3339_us(&r.timestamp)?;
    let status = r.status.as_u64("http.response.status")?;
    let status = u16::try_from(status)
        .map_err(|_| format!("http.response.status {status} is out of range"))?;
    let written = match &r.written {
        Some(w) => w.as_u64("http.response.written")?,
        None => 0,
    };
    if let Some(d) = &r.duration {
        let secs = match d {
            NumOrStr::Num(n) => *n,
            NumOrStr::Str(s) => s
                .parse::<f64>()
                .map_err(|_| "http.request.duration is not a number".to_string())?,
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!(
                "http.request.duration {secs} is not a duration in seconds"
            ));
        }
    }
    http_event(
        time_us,
        &r.method,
        &r.uri,
        r.remoteaddr.as_deref(),
        status,
        written,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    First,
    Next,
    Done,
}

/// Cuts a JSON array into its elements, one at a time.
pub struct ArrayScanner<R> {
    inner: R,
    state: State,
    limit: usize,
    /// 0-based index of the element last returned.
    pub index: u64,
    /// Bytes consumed so far.
    pub offset: u64,
}

/// What the scanner found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// An element, in the caller's buffer.
    Element,
    /// An element larger than the limit; skipped.
    TooLong,
}

impl<R: BufRead> ArrayScanner<R> {
    pub fn new(inner: R, limit: usize) -> Self {
        ArrayScanner {
            inner,
            state: State::Start,
            limit,
            index: 0,
            offset: 0,
        }
    }

    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            match self.inner.fill_buf() {
                Ok(b) => return Ok(b.first().copied()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn bump(&mut self) {
        self.inner.consume(1);
        self.offset += 1;
    }

    fn skip_ws(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(c) if c.is_ascii_whitespace() => self.bump(),
                other => return Ok(other),
            }
        }
    }

    /// The next element into `buf`; `Ok(Ok(None))` at the end of the array; `Ok(Err(why))` when the
    /// structure is broken (the file cannot be read further).
    pub fn next(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Result<Option<Scanned>, String>> {
        buf.clear();
        loop {
            match self.state {
                State::Done => return Ok(Ok(None)),
                State::Start => match self.skip_ws()? {
                    Some(b'[') => {
                        self.bump();
                        self.state = State::First;
                    }
                    Some(c) => {
                        self.state = State::Done;
                        return Ok(Err(format!(
                            "expected a json array, found byte {:?} at offset {}",
                            c as char, self.offset
                        )));
                    }
                    None => {
                        self.state = State::Done;
                        return Ok(Err("empty file: expected a json array".into()));
                    }
                },
                State::First => {
                    if self.skip_ws()? == Some(b']') {
                        self.bump();
                        self.state = State::Done;
                        continue;
                    }
                    break;
                }
                State::Next => match self.skip_ws()? {
                    Some(b',') => {
                        self.bump();
                        break;
                    }
                    Some(b']') => {
                        self.bump();
                        self.state = State::Done;
                    }
                    Some(c) => {
                        self.state = State::Done;
                        return Ok(Err(format!(
                            "expected ',' or ']' after element {}, found {:?} at offset {}",
                            self.index, c as char, self.offset
                        )));
                    }
                    None => {
                        self.state = State::Done;
                        return Ok(Err(format!(
                            "file ends inside the array after element {}",
                            self.index
                        )));
                    }
                },
            }
        }
        if self.state == State::Next {
            self.index += 1;
        }
        self.state = State::Next;
        self.skip_ws()?;
        // Capture one value: track nesting and strings so that only the top level ends it.
        let mut depth: u32 = 0;
        let mut in_str = false;
        let mut escaped = false;
        let mut too_long = false;
        let mut len = 0usize;
        loop {
            let Some(c) = self.peek()? else {
                self.state = State::Done;
                return Ok(Err(format!("file ends inside element {}", self.index)));
            };
            if !in_str && depth == 0 && len > 0 && matches!(c, b',' | b']') {
                break;
            }
            if !in_str && depth == 0 && len > 0 && c.is_ascii_whitespace() {
                break;
            }
            self.bump();
            len += 1;
            if !too_long {
                if buf.len() >= self.limit {
                    too_long = true;
                    buf.clear();
                } else {
                    buf.push(c);
                }
            }
            if in_str {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_str = false;
                    if depth == 0 {
                        break;
                    }
                }
                continue;
            }
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    if depth == 0 {
                        self.state = State::Done;
                        return Ok(Err(format!(
                            "unbalanced {:?} in element {}",
                            c as char, self.index
                        )));
                    }
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        Ok(Ok(Some(if too_long {
            Scanned::TooLong
        } else {
            Scanned::Element
        })))
    }
}

/// Reads one IBM trace file.
pub struct IbmReader {
    scan: ArrayScanner<Box<dyn BufRead + Send>>,
    buf: Vec<u8>,
    tally: Tally,
}

impl IbmReader {
    pub fn open(path: &Path, opts: ReadOptions) -> Result<IbmReader, TraceError> {
        let tally = Tally::new(path, opts);
        let input = super::open_text(path).map_err(|e| tally.io(e))?;
        Ok(IbmReader {
            scan: ArrayScanner::new(input, MAX_ELEMENT_BYTES),
            buf: Vec::new(),
            tally,
        })
    }

    pub fn from_bufread(
        input: Box<dyn BufRead + Send>,
        name: &Path,
        opts: ReadOptions,
    ) -> IbmReader {
        IbmReader {
            scan: ArrayScanner::new(input, MAX_ELEMENT_BYTES),
            buf: Vec::new(),
            tally: Tally::new(name, opts),
        }
    }
}

impl EventSource for IbmReader {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            let scanned = self
                .scan
                .next(&mut self.buf)
                .map_err(|e| self.tally.io(e))?;
            let pos = Position::Record(self.scan.index);
            match scanned {
                Ok(None) => return Ok(None),
                Err(why) => {
                    self.tally.stats.records += 1;
                    self.tally.malformed(pos, why)?;
                    return Ok(None);
                }
                Ok(Some(Scanned::TooLong)) => {
                    self.tally.stats.records += 1;
                    self.tally.malformed(
                        pos,
                        format!("element larger than {MAX_ELEMENT_BYTES} bytes"),
                    )?;
                }
                Ok(Some(Scanned::Element)) => {
                    self.tally.stats.records += 1;
                    match parse_element(&self.buf) {
                        Ok(ev) => {
                            self.tally.stats.events += 1;
                            return Ok(Some(ev));
                        }
                        Err(why) => self.tally.malformed(pos, why)?,
                    }
                }
            }
        }
    }

    fn stats(&self) -> ReadStats {
        self.tally.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ObjectKind;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn obj(ts: &str, uri: &str, status: u16) -> String {
        format!(
            "{{\"host\":\"h1\",\"http.request.duration\":0.25,\"http.request.method\":\"GET\",\"http.request.remoteaddr\":\"c{ts}\",\
             \"http.request.uri\":\"{uri}\",\"http.request.useragent\":\"docker/17.04 {{x]\\\"y\",\"http.response.status\":{status},\
             \"http.response.written\":1024,\"id\":\"abc\",\"timestamp\":\"2017-06-20T02:12:4{ts}.004Z\"}}"
        )
    }

    fn reader(text: &str) -> IbmReader {
        let input: Box<dyn BufRead + Send> =
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        IbmReader::from_bufread(input, &PathBuf::from("dal.json"), ReadOptions::default())
    }

    fn all(r: &mut IbmReader) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            v.push(e);
        }
        v
    }

    #[test]
    fn streams_elements_with_tricky_strings() {
        let text = format!(
            "[\n {},\n {} , {{\"timestamp\":1}}, 42, {}\n]",
            obj("0", "/v2/AnonUser/AnonRepo/blobs/tokenA", 200),
            obj("1", "/v2/AnonUser/AnonRepo/manifests/latest", 200),
            obj("2", "/v2/x/blobs/uploads/", 202)
        );
        let mut r = reader(&text);
        let evs = all(&mut r);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].kind, ObjectKind::Blob);
        assert_eq!(evs[0].repo.as_deref(), Some("AnonUser/AnonRepo"));
        assert_eq!(evs[0].size, 1024);
        assert_eq!(
            evs[1].image,
            Some(crate::event::image_id("AnonUser/AnonRepo", "latest"))
        );
        assert_eq!(evs[2].kind, ObjectKind::Upload);
        let s = r.stats();
        assert_eq!((s.records, s.events, s.malformed), (5, 3, 2));
        assert_eq!(s.samples[0].position, Position::Record(2));
        assert_eq!(s.samples[1].position, Position::Record(3));
    }

    #[test]
    fn broken_structure_ends_the_file_with_a_report() {
        for (text, good) in [
            (
                format!(
                    "[{} {}]",
                    obj("0", "/v2/a/blobs/b", 200),
                    obj("1", "/v2/a/blobs/b", 200)
                ),
                1,
            ),
            (
                format!("[{}, {{\"timestamp\"", obj("0", "/v2/a/blobs/b", 200)),
                1,
            ),
            ("{}".to_string(), 0),
            (String::new(), 0),
            ("[]".to_string(), 0),
        ] {
            let mut r = reader(&text);
            let evs = all(&mut r);
            assert_eq!(evs.len(), good, "{text}");
            let expect_bad = if text == "[]" { 0 } else { 1 };
            assert_eq!(r.stats().malformed, expect_bad, "{text}");
        }
    }

    #[test]
    fn merges_files_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        std::fs::write(
            &a,
            format!(
                "[{},{}]",
                obj("0", "/v2/a/blobs/x", 200),
                obj("4", "/v2/a/blobs/x", 200)
            ),
        )
        .unwrap();
        std::fs::write(
            &b,
            format!(
                "[{},{}]",
                obj("1", "/v2/a/blobs/y", 200),
                obj("2", "/v2/a/blobs/y", 200)
            ),
        )
        .unwrap();
        let mut src = super::super::open(
            &[a, b],
            super::super::TraceFormat::Ibm,
            ReadOptions::default(),
        )
        .unwrap();
        let mut times = Vec::new();
        while let Some(e) = src.next_event().unwrap() {
            times.push(e.time_us);
        }
        assert_eq!(times.len(), 4);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(src.stats().out_of_order, 0);
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let input: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(data));
            let mut r = IbmReader::from_bufread(input, &PathBuf::from("x"), ReadOptions::default());
            let mut n = 0;
            while let Ok(Some(_)) = r.next_event() { n += 1; }
            let s = r.stats();
            prop_assert_eq!(s.events, n);
            prop_assert!(s.records >= s.events + s.malformed.min(1).saturating_sub(1));
        }

        #[test]
        fn valid_arrays_read_fully(n in 0usize..20, ws in "[ \n\t]{0,3}") {
            let items: Vec<String> = (0..n).map(|i| obj(&(i % 10).to_string(), "/v2/r/blobs/d", 200)).collect();
            let text = format!("{ws}[{ws}{}{ws}]{ws}", items.join(&format!("{ws},{ws}")));
            let mut r = reader(&text);
            let evs = all(&mut r);
            prop_assert_eq!(evs.len(), n);
            prop_assert_eq!(r.stats().malformed, 0);
        }
    }
}
