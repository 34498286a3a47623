//! Streaming trace readers.
//!
//! Every reader holds at most one record (one line, one JSON array element, one 24-byte record) in
//! memory beyond fixed-size buffers, so memory stays bounded whatever the trace's length. A record
//! that cannot be read is counted in [`ReadStats`], the first few are kept with their file and
//! position for the report, and reading goes on — unless the caller asked for `strict`, in which
//! case the first one is returned as [`TraceError::Malformed`].

mod distribution;
mod ibm;
mod lines;
mod oracle;
mod thaw;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use distribution::DistributionReader;
pub use ibm::{IbmReader, MAX_ELEMENT_BYTES};
pub use lines::{LineReader, MAX_LINE_BYTES};
pub use oracle::{write_records, OracleReader, OracleRecord, ORACLE_RECORD_BYTES};
pub use thaw::{request_into_event, request_to_event, ThawReader};

use crate::event::Event;

/// The trace formats thaw reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceFormat {
    /// thaw's own JSON-lines records (`thaw_record`).
    Thaw,
    /// The CNCF distribution registry's JSON log lines.
    Distribution,
    /// The IBM Docker registry traces (Anwar et al., FAST'18): JSON arrays of request objects.
    Ibm,
    /// libCacheSim's `oracleGeneral` binary records, optionally zstd-compressed.
    OracleGeneral,
}

impl TraceFormat {
    pub const NAMES: &'static [&'static str] = &["thaw", "distribution", "ibm", "oracle-general"];

    /// Whether events of this format can carry repositories (hence categories) and images.
    pub fn has_repositories(self) -> bool {
        !matches!(self, TraceFormat::OracleGeneral)
    }
}

impl FromStr for TraceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "thaw" => Ok(TraceFormat::Thaw),
            "distribution" => Ok(TraceFormat::Distribution),
            "ibm" => Ok(TraceFormat::Ibm),
            "oracle-general" | "oraclegeneral" | "oracle_general" => Ok(TraceFormat::OracleGeneral),
            _ => Err(format!(
                "unknown trace format {s:?}; known formats: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceFormat::Thaw => "thaw",
            TraceFormat::Distribution => "distribution",
            TraceFormat::Ibm => "ibm",
            TraceFormat::OracleGeneral => "oracle-general",
        })
    }
}

/// Where in a file a record sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// 1-based line number (JSON-lines formats).
    Line(u64),
    /// 0-based index of an element of a JSON array or of a binary record.
    Record(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Record(n) => write!(f, "record {n}"),
        }
    }
}

/// One record that could not be read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Malformed {
    pub file: PathBuf,
    pub position: Position,
    pub why: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.position,
            self.why
        )
    }
}

/// How many malformed records are kept with their position (the rest are only counted).
pub const MALFORMED_SAMPLES: usize = 20;

/// What a reader saw.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReadStats {
    /// Records read (lines, array elements, binary records), good or bad.
    pub records: u64,
    /// Events produced.
    pub events: u64,
    /// Records that are valid but not requests (file-access records, log lines of a registry that
    /// are not request logs).
    pub skipped: u64,
    pub malformed: u64,
    /// The first [`MALFORMED_SAMPLES`] malformed records.
    pub samples: Vec<Malformed>,
    /// Events whose time is earlier than the previous event's (after merging several files).
    pub out_of_order: u64,
}

impl ReadStats {
    /// Adds `o`'s counts to these, keeping at most [`MALFORMED_SAMPLES`] samples.
    pub(crate) fn merge(&mut self, o: &ReadStats) {
        self.records += o.records;
        self.events += o.events;
        self.skipped += o.skipped;
        self.malformed += o.malformed;
        self.out_of_order += o.out_of_order;
        for m in &o.samples {
            if self.samples.len() < MALFORMED_SAMPLES {
                self.samples.push(m.clone());
            }
        }
    }
}

/// Errors of the readers.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("cannot read trace {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed record, in strict mode.
    #[error("malformed record at {0} (strict mode; drop --strict to skip and count such records)")]
    Malformed(Malformed),
    /// The file is not in the format it was said to be in, at a point from which reading cannot go on.
    #[error("{path} is not a valid {format} trace: {why}")]
    Format {
        path: PathBuf,
        format: TraceFormat,
        why: String,
    },
    /// No input was given.
    #[error("no trace files given")]
    NoInput,
}

/// Options shared by every reader.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Stop at the first malformed record instead of counting it.
    pub strict: bool,
}

/// A source of normalised events.
pub trait EventSource: Send {
    /// The next event, `None` at the end.
    fn next_event(&mut self) -> Result<Option<Event>, TraceError>;
    /// What was read so far.
    fn stats(&self) -> ReadStats;
}

/// Shared bookkeeping for a single file's reader.
#[derive(Debug)]
pub(crate) struct Tally {
    pub path: PathBuf,
    pub strict: bool,
    pub stats: ReadStats,
}

impl Tally {
    pub fn new(path: &Path, opts: ReadOptions) -> Tally {
        Tally {
            path: path.to_path_buf(),
            strict: opts.strict,
            stats: ReadStats::default(),
        }
    }

    /// Records a malformed record; an error in strict mode.
    pub fn malformed(
        &mut self,
        position: Position,
        why: impl Into<String>,
    ) -> Result<(), TraceError> {
        let m = Malformed {
            file: self.path.clone(),
            position,
            why: why.into(),
        };
        self.stats.malformed += 1;
        if self.strict {
            return Err(TraceError::Malformed(m));
        }
        if self.stats.samples.len() < MALFORMED_SAMPLES {
            self.stats.samples.push(m);
        }
        Ok(())
    }

    pub fn io(&self, source: std::io::Error) -> TraceError {
        TraceError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The next line of a JSON-lines file worth parsing, with its position. Lines longer than the
/// reader's limit and lines that are not UTF-8 are counted as malformed (an error when strict);
/// blank lines are counted as skipped. Takes the reader's fields apart, so the caller can go on
/// using `tally` while it holds the line (which borrows `buf`).
pub(crate) fn next_text_line<'a, R: std::io::BufRead>(
    lines: &mut LineReader<R>,
    buf: &'a mut Vec<u8>,
    tally: &mut Tally,
) -> Result<Option<(Position, &'a str)>, TraceError> {
    loop {
        let line = match lines.next_line(buf) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(None),
            Err(e) => return Err(tally.io(e)),
        };
        tally.stats.records += 1;
        let pos = Position::Line(lines.line_no);
        if line == lines::Line::TooLong {
            tally.malformed(pos, format!("line longer than {} bytes", MAX_LINE_BYTES))?;
            continue;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            tally.stats.skipped += 1;
            continue;
        }
        if std::str::from_utf8(buf).is_err() {
            tally.malformed(pos, "line is not utf-8")?;
            continue;
        }
        break;
    }
    // Checked just above; re-borrowed here so the returned slice outlives the loop.
    let text = std::str::from_utf8(buf).expect("checked as utf-8");
    Ok(Some((Position::Line(lines.line_no), text)))
}

/// Opens one file in `format`.
pub fn open_file(
    path: &Path,
    format: TraceFormat,
    opts: ReadOptions,
) -> Result<Box<dyn EventSource>, TraceError> {
    Ok(match format {
        TraceFormat::Thaw => Box::new(ThawReader::open(path, opts)?),
        TraceFormat::Distribution => Box::new(DistributionReader::open(path, opts)?),
        TraceFormat::Ibm => Box::new(IbmReader::open(path, opts)?),
        TraceFormat::OracleGeneral => Box::new(OracleReader::open(path, opts)?),
    })
}

/// Opens several files of one format as one stream merged in time order (each file is assumed to
/// be in time order itself, as registries write them; violations are counted as `out_of_order`).
pub fn open(
    paths: &[PathBuf],
    format: TraceFormat,
    opts: ReadOptions,
) -> Result<Box<dyn EventSource>, TraceError> {
    if paths.is_empty() {
        return Err(TraceError::NoInput);
    }
    let mut sources = Vec::with_capacity(paths.len());
    for p in paths {
        sources.push(open_file(p, format, opts)?);
    }
    if sources.len() == 1 {
        return Ok(Box::new(Ordered {
            inner: sources.pop().expect("one source"),
            last: 0,
            out_of_order: 0,
        }));
    }
    Ok(Box::new(Merge::new(sources)))
}

/// Counts time-order violations of a single source.
struct Ordered {
    inner: Box<dyn EventSource>,
    last: u64,
    out_of_order: u64,
}

impl EventSource for Ordered {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        let ev = self.inner.next_event()?;
        if let Some(e) = &ev {
            if e.time_us < self.last {
                self.out_of_order += 1;
            }
            self.last = self.last.max(e.time_us);
        }
        Ok(ev)
    }

    fn stats(&self) -> ReadStats {
        let mut s = self.inner.stats();
        s.out_of_order += self.out_of_order;
        s
    }
}

/// A k-way merge by time over several sources: one pending event per source in a heap.
pub struct Merge {
    sources: Vec<Box<dyn EventSource>>,
    heads: Vec<Option<Event>>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    started: bool,
    last: u64,
    out_of_order: u64,
}

impl Merge {
    pub fn new(sources: Vec<Box<dyn EventSource>>) -> Merge {
        let n = sources.len();
        Merge {
            sources,
            heads: vec![None; n],
            heap: BinaryHeap::new(),
            started: false,
            last: 0,
            out_of_order: 0,
        }
    }

    fn refill(&mut self, i: usize) -> Result<(), TraceError> {
        if let Some(e) = self.sources[i].next_event()? {
            self.heap.push(Reverse((e.time_us, i)));
            self.heads[i] = Some(e);
        }
        Ok(())
    }
}

impl EventSource for Merge {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.refill(i)?;
            }
        }
        let Some(Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let ev = self.heads[i].take().expect("a heap entry has its event");
        self.refill(i)?;
        if ev.time_us < self.last {
            self.out_of_order += 1;
        }
        self.last = self.last.max(ev.time_us);
        Ok(Some(ev))
    }

    fn stats(&self) -> ReadStats {
        let mut s = ReadStats::default();
        for src in &self.sources {
            s.merge(&src.stats());
        }
        s.out_of_order += self.out_of_order;
        s
    }
}

/// Strips a `:port` suffix from an address (`10.0.0.1:5555` → `10.0.0.1`, `[::1]:80` → `::1`),
/// leaving anything else (anonymised ids) as given.
pub(crate) fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
    }
    match addr.rsplit_once(':') {
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(strip_port("10.0.0.1:5555"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("client-7"), "client-7");
    }

    #[test]
    fn formats_parse() {
        for n in TraceFormat::NAMES {
            let f: TraceFormat = n.parse().unwrap();
            assert_eq!(&f.to_string(), n);
        }
        assert!("csv".parse::<TraceFormat>().is_err());
    }
}

/// Opens a text trace, decompressing it when it starts with zstd's magic number.
pub(crate) fn open_text(path: &Path) -> std::io::Result<Box<dyn std::io::BufRead + Send>> {
    use std::io::{BufRead, BufReader};
    let f = std::fs::File::open(path)?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let is_zstd = r.fill_buf()?.starts_with(&ZSTD_MAGIC);
    if is_zstd {
        let dec = zstd::stream::read::Decoder::with_buffer(r)?;
        Ok(Box::new(BufReader::with_capacity(1 << 16, dec)))
    } else {
        Ok(Box::new(r))
    }
}

/// The first four bytes of every zstd frame.
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A number, or a string holding one (logs are not consistent about it).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum NumOrStr {
    Num(f64),
    Str(String),
}

impl NumOrStr {
    pub fn as_u64(&self, what: &str) -> Result<u64, String> {
        let v = match self {
            NumOrStr::Num(n) => *n,
            NumOrStr::Str(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{what} {:?} is not a number", crate::event::clip(s)))?,
        };
        if !v.is_finite() || !(0.0..=1.8e19).contains(&v) {
            return Err(format!("{what} {v} is out of range"));
        }
        Ok(v as u64)
    }
}

/// The event of an HTTP request as registry logs describe it (distribution and IBM formats).
pub(crate) fn http_event(
    time_us: u64,
    method: &str,
    uri: &str,
    remote: Option<&str>,
    status: u16,
    written: u64,
) -> Result<Event, String> {
    use crate::event::{image_id, key_of_digest, parse_uri, stable_hash, Method, ObjectKind};
    let parsed = parse_uri(uri)?;
    let method = Method::parse(method);
    let (key, image) = match (&parsed.repo, &parsed.reference, parsed.kind) {
        (Some(_), Some(rf), ObjectKind::Blob) => (key_of_digest(rf), None),
        (Some(repo), Some(rf), ObjectKind::Manifest) => {
            let key = if rf.contains(':') {
                key_of_digest(rf)
            } else {
                stable_hash(&[repo, rf])
            };
            (key, Some(image_id(repo, rf)))
        }
        (Some(repo), _, _) => (stable_hash(&[repo]), None),
        _ => (0, None),
    };
    let cache_access = method == Method::Get
        && matches!(parsed.kind, ObjectKind::Manifest | ObjectKind::Blob)
        && matches!(status, 200 | 206);
    Ok(Event {
        time_us,
        client: remote
            .map(|r| strip_port(r).to_string())
            .filter(|r| !r.is_empty()),
        repo: parsed.repo,
        kind: parsed.kind,
        key,
        reference: parsed.reference,
        size: written,
        method,
        status,
        image,
        cache_access,
        layers: Vec::new(),
    })
}

/// Events decoded per batch by [`Background`].
pub const BACKGROUND_BATCH: usize = 4096;
/// Batches in flight between the decoding thread and the consumer.
const BACKGROUND_DEPTH: usize = 4;

type Batch = Result<(Vec<Event>, ReadStats), TraceError>;

/// Decodes another source on its own thread, so parsing (the costly part of text formats)
/// overlaps with whatever consumes the events. At most `BACKGROUND_DEPTH` batches of
/// [`BACKGROUND_BATCH`] events are buffered: memory stays bounded.
pub struct Background {
    rx: std::sync::mpsc::Receiver<Batch>,
    current: std::vec::IntoIter<Event>,
    stats: ReadStats,
    done: bool,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn new(mut src: Box<dyn EventSource>) -> Background {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(BACKGROUND_DEPTH);
        let worker = std::thread::spawn(move || loop {
            let mut batch = Vec::with_capacity(BACKGROUND_BATCH);
            let mut end = false;
            while batch.len() < BACKGROUND_BATCH {
                match src.next_event() {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) => {
                        end = true;
                        break;
                    }
                    Err(e) => {
                        // Deliver the events before the error first, as a direct reader would.
                        if !batch.is_empty() && tx.send(Ok((batch, src.stats()))).is_err() {
                            return;
                        }
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            // The receiver hung up: nobody wants the rest.
            if tx.send(Ok((batch, src.stats()))).is_err() || end {
                return;
            }
        });
        Background {
            rx,
            current: Vec::new().into_iter(),
            stats: ReadStats::default(),
            done: false,
            worker: Some(worker),
        }
    }
}

impl EventSource for Background {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            if let Some(e) = self.current.next() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(Ok((batch, stats))) => {
                    self.stats = stats;
                    if batch.is_empty() {
                        self.done = true;
                    }
                    self.current = batch.into_iter();
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The worker ended after sending its last (possibly full) batch.
                Err(_) => {
                    self.done = true;
                    if let Some(w) = self.worker.take() {
                        let _ = w.join();
                    }
                }
            }
        }
    }

    fn stats(&self) -> ReadStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod background_tests {
    use super::*;

    struct Counting {
        n: u64,
        fail_at: Option<u64>,
    }

    impl EventSource for Counting {
        fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
            if Some(self.n) == self.fail_at {
                return Err(TraceError::NoInput);
            }
            if self.n == 10_000 {
                return Ok(None);
            }
            self.n += 1;
            Ok(Some(Event::access(self.n, self.n, 1)))
        }
        fn stats(&self) -> ReadStats {
            ReadStats {
                events: self.n,
                ..Default::default()
            }
        }
    }

    #[test]
    fn passes_every_event_in_order_and_the_final_stats() {
        let mut b = Background::new(Box::new(Counting {
            n: 0,
            fail_at: None,
        }));
        let mut last = 0;
        while let Some(e) = b.next_event().unwrap() {
            assert_eq!(e.key, last + 1);
            last = e.key;
        }
        assert_eq!(last, 10_000);
        assert_eq!(b.stats().events, 10_000);
        assert!(b.next_event().unwrap().is_none());
    }

    #[test]
    fn errors_reach_the_consumer() {
        let mut b = Background::new(Box::new(Counting {
            n: 0,
            fail_at: Some(5000),
        }));
        let mut seen = 0;
        let err = loop {
            match b.next_event() {
                Ok(Some(_)) => seen += 1,
                Ok(None) => panic!("the error was lost"),
                Err(e) => break e,
            }
        };
        assert_eq!(seen, 5000);
        assert!(matches!(err, TraceError::NoInput));
    }
}
