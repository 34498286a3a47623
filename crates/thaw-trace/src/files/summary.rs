//! From file-access records to the summary: the hot-file list, shares of files and bytes
//! accessed, and how accessed files spread over layers.
//!
//! The summary is computed the same way whether the records arrive live from the recorder or are
//! read back from a records file (`thaw trace files --output`); only the image inventory (files
//! and bytes in the image and in each layer) needs the recorder, since records name only the
//! files that were touched.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thaw_record::{FileAccessRecord, FileOp, Record};

use super::FilesError;
use crate::read::{next_text_line, LineReader, ReadOptions, ReadStats, Tally};

/// What "bytes accessed" means, written into every summary and shown by the report and `--help`.
pub const BYTES_DEFINITION: &str = "fanotify reports that a file was opened, executed or read, but not which offsets were read, \
and not at all when a memory-mapped file is paged in; \"bytes accessed\" is therefore the whole size of every file that was \
read or executed: an upper bound of the bytes actually touched. Files only opened (no read event) count as accessed files \
with 0 bytes. \"reads\" counts FAN_ACCESS events, which the kernel merges while they wait in the queue: a lower bound of \
read calls.";

/// Version of the summary document; readers refuse newer ones.
pub const SUMMARY_VERSION: u32 = 1;

/// The summary document's `kind`, so a file can be recognised.
pub const SUMMARY_KIND: &str = "thaw-trace-files";

/// One accessed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStat {
    /// Path inside the container's root.
    pub path: String,
    /// The layer providing it; `None` when the container wrote it (no layer holds it).
    pub layer: Option<String>,
    /// Largest size seen.
    pub size: u64,
    pub opened: u64,
    pub executed: u64,
    /// FAN_ACCESS events (see [`BYTES_DEFINITION`]).
    pub reads: u64,
    /// When it was first seen, microseconds after the container's process started.
    pub first_us: u64,
    /// `size` when the file was read or executed, else 0.
    pub bytes: u64,
}

/// One layer's files and bytes in the merged image, and what of them was accessed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerStat {
    /// diff_id (or the root directory for a plain directory image).
    pub id: String,
    /// Regular files this layer provides to the merged image (shadowed ones not counted);
    /// `None` when summarised from records alone.
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub accessed_files: u64,
    pub accessed_bytes: u64,
    pub file_share: Option<f64>,
    pub byte_share: Option<f64>,
}

/// How the recording ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum ReadyBy {
    /// The command exited with this status (`code` for an exit, `signal` when killed).
    Exit { code: Option<i32>, signal: Option<i32> },
    /// A TCP connection to the port succeeded.
    Port { port: u16 },
    /// A line of the container's output matched.
    Log { line: String },
    /// Summarised from a records file: unknown.
    Unknown,
}

/// The result of `thaw trace files`, also read back by `thaw trace report --files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesSummary {
    pub kind: String,
    pub v: u32,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub runtime: String,
    pub ready: ReadyBy,
    /// When the container's process was started, microseconds since the Unix epoch.
    pub started_us: u64,
    /// From start to ready, microseconds.
    pub duration_us: u64,
    /// [`BYTES_DEFINITION`].
    pub definition: String,
    /// Regular files and bytes in the image (`None` when summarised from records alone).
    pub image_files: Option<u64>,
    pub image_bytes: Option<u64>,
    /// Image files opened, executed or read.
    pub accessed_files: u64,
    /// Of those, files read or executed, and their bytes.
    pub read_files: u64,
    pub accessed_bytes: u64,
    pub file_share: Option<f64>,
    pub byte_share: Option<f64>,
    /// Files no layer holds: created by the container.
    pub written_files: u64,
    /// fanotify events read, queue overflows (events lost), events whose file had no path.
    pub events: u64,
    pub overflows: u64,
    pub unmapped: u64,
    /// Layers base first (in first-seen order when summarised from records alone).
    pub layers: Vec<LayerStat>,
    /// Accessed files, in order of first access (the hot-file list).
    pub files: Vec<FileStat>,
    /// Wall time of each step of the recording (name, microseconds); empty from records.
    #[serde(default)]
    pub stages_us: Vec<(String, u64)>,
}

/// What the recorder knows about the image besides the records.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    pub image: String,
    pub command: Vec<String>,
    pub runtime: String,
    /// Layers base first: (id, files, bytes) in the merged view.
    pub layers: Vec<(String, u64, u64)>,
    pub total_files: u64,
    pub total_bytes: u64,
}

/// Builds a summary from records, in the order they were written.
#[derive(Debug, Default)]
pub struct Aggregator {
    files: Vec<FileStat>,
    index: HashMap<String, usize>,
    first_ts: Option<u64>,
    start_us: Option<u64>,
    pub events: u64,
    pub overflows: u64,
    pub unmapped: u64,
}

impl Aggregator {
    /// `start_us`: when the container's process started (times are taken relative to it);
    /// `None` takes the first record's time.
    pub fn new(start_us: Option<u64>) -> Aggregator {
        Aggregator { start_us, ..Default::default() }
    }

    pub fn add(&mut self, r: &FileAccessRecord) {
        let start = *self.start_us.get_or_insert(r.ts_us);
        self.first_ts = Some(self.first_ts.map_or(r.ts_us, |t| t.min(r.ts_us)));
        let i = match self.index.get(&r.path) {
            Some(&i) => i,
            None => {
                self.files.push(FileStat {
                    path: r.path.clone(),
                    layer: r.layer.clone(),
                    size: 0,
                    opened: 0,
                    executed: 0,
                    reads: 0,
                    first_us: r.ts_us.saturating_sub(start),
                    bytes: 0,
                });
                self.index.insert(r.path.clone(), self.files.len() - 1);
                self.files.len() - 1
            }
        };
        let f = &mut self.files[i];
        f.size = f.size.max(r.size);
        f.first_us = f.first_us.min(r.ts_us.saturating_sub(start));
        match r.op {
            FileOp::Open => f.opened += 1,
            FileOp::OpenExec => f.executed += 1,
            FileOp::Access => f.reads += 1,
            FileOp::Close => {}
        }
    }

    /// The summary. `facts` carries the image inventory when the recorder made it.
    pub fn finish(self, facts: Option<&ImageFacts>, ready: ReadyBy, duration_us: u64) -> FilesSummary {
        let mut files = self.files;
        for f in &mut files {
            f.bytes = if f.reads > 0 || f.executed > 0 { f.size } else { 0 };
        }
        // Stable: files first seen at the same microsecond keep their arrival order.
        files.sort_by_key(|f| f.first_us);
        let mut layers: Vec<LayerStat> = match facts {
            Some(fa) => fa
                .layers
                .iter()
                .map(|(id, n, b)| LayerStat {
                    id: id.clone(),
                    files: Some(*n),
                    bytes: Some(*b),
                    accessed_files: 0,
                    accessed_bytes: 0,
                    file_share: None,
                    byte_share: None,
                })
                .collect(),
            None => Vec::new(),
        };
        let (mut accessed, mut read, mut bytes, mut written) = (0, 0, 0, 0);
        for f in &files {
            let Some(l) = &f.layer else {
                written += 1;
                continue;
            };
            accessed += 1;
            bytes += f.bytes;
            if f.bytes > 0 || f.reads > 0 || f.executed > 0 {
                read += 1;
            }
            let li = match layers.iter().position(|x| &x.id == l) {
                Some(i) => i,
                None => {
                    layers.push(LayerStat {
                        id: l.clone(),
                        files: None,
                        bytes: None,
                        accessed_files: 0,
                        accessed_bytes: 0,
                        file_share: None,
                        byte_share: None,
                    });
                    layers.len() - 1
                }
            };
            layers[li].accessed_files += 1;
            layers[li].accessed_bytes += f.bytes;
        }
        for l in &mut layers {
            l.file_share = l.files.map(|n| share(l.accessed_files, n));
            l.byte_share = l.bytes.map(|b| share(l.accessed_bytes, b));
        }
        let image_files = facts.map(|f| f.total_files);
        let image_bytes = facts.map(|f| f.total_bytes);
        FilesSummary {
            kind: SUMMARY_KIND.into(),
            v: SUMMARY_VERSION,
            image: facts.map(|f| f.image.clone()).unwrap_or_default(),
            command: facts.map(|f| f.command.clone()).unwrap_or_default(),
            runtime: facts.map(|f| f.runtime.clone()).unwrap_or_default(),
            ready,
            started_us: self.start_us.or(self.first_ts).unwrap_or(0),
            duration_us,
            definition: BYTES_DEFINITION.into(),
            image_files,
            image_bytes,
            accessed_files: accessed,
            read_files: read,
            accessed_bytes: bytes,
            file_share: image_files.map(|n| share(accessed, n)),
            byte_share: image_bytes.map(|b| share(bytes, b)),
            written_files: written,
            events: self.events,
            overflows: self.overflows,
            unmapped: self.unmapped,
            layers,
            files,
            stages_us: Vec::new(),
        }
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Reads `thaw trace files` output: either the summary document (`--json`) or a records file
/// (`--output`, JSON lines of file-access records, summarised here without the image inventory).
/// Malformed record lines are counted in the returned stats, never fatal; a file that is neither
/// is an error.
pub fn load(path: &Path) -> Result<(FilesSummary, ReadStats), FilesError> {
    let io = |e: std::io::Error| FilesError::Io { what: format!("reading {}", path.display()), source: e };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut head = [0u8; 512];
    let n = {
        use std::io::Read;
        let mut f = &file;
        f.read(&mut head).map_err(io)?
    };
    let head = String::from_utf8_lossy(&head[..n]);
    if head.contains(&format!("\"kind\": \"{SUMMARY_KIND}\"")) || head.contains(&format!("\"kind\":\"{SUMMARY_KIND}\"")) {
        let text = std::fs::read(path).map_err(io)?;
        if text.len() > MAX_SUMMARY_BYTES {
            return Err(FilesError::BadInput { path: path.into(), why: format!("summary larger than {MAX_SUMMARY_BYTES} bytes") });
        }
        let s: FilesSummary = serde_json::from_slice(&text).map_err(|e| FilesError::BadInput { path: path.into(), why: e.to_string() })?;
        if s.v > SUMMARY_VERSION {
            return Err(FilesError::BadInput { path: path.into(), why: format!("summary version {} is newer than this build reads ({SUMMARY_VERSION}); upgrade thaw", s.v) });
        }
        return Ok((s, ReadStats::default()));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    read_records(Box::new(std::io::BufReader::new(file)), path)
}

/// A summary document is one JSON value held in memory: refuse absurd sizes.
pub const MAX_SUMMARY_BYTES: usize = 256 << 20;

/// Summarises JSON lines of file-access records (bounded line length, malformed lines counted).
pub fn read_records(input: Box<dyn BufRead + Send>, name: &Path) -> Result<(FilesSummary, ReadStats), FilesError> {
    let mut lines = LineReader::new(input);
    let mut buf = Vec::new();
    let mut tally = Tally::new(name, ReadOptions { strict: false });
    let mut agg = Aggregator::new(None);
    let (mut first, mut last) = (u64::MAX, 0u64);
    while let Some((pos, text)) = next_text_line(&mut lines, &mut buf, &mut tally).map_err(|e| FilesError::BadInput { path: name.into(), why: e.to_string() })? {
        match Record::from_line(text) {
            Ok(Record::File(r)) => {
                tally.stats.events += 1;
                first = first.min(r.ts_us);
                last = last.max(r.ts_us);
                agg.add(&r);
            }
            Ok(Record::Request(_)) => tally.stats.skipped += 1,
            Err(e) => {
                let _ = tally.malformed(pos, e.to_string());
            }
        }
    }
    if tally.stats.events == 0 {
        return Err(FilesError::BadInput {
            path: name.into(),
            why: format!("no file-access records ({} malformed lines); expected `thaw trace files --output` or `--json` output", tally.stats.malformed),
        });
    }
    agg.events = tally.stats.events;
    let s = agg.finish(None, ReadyBy::Unknown, last.saturating_sub(first));
    Ok((s, tally.stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(ts: u64, path: &str, op: FileOp, size: u64, layer: Option<&str>) -> FileAccessRecord {
        FileAccessRecord { v: 1, ts_us: ts, image: "img".into(), path: path.into(), op, size, layer: layer.map(String::from), pid: Some(7) }
    }

    fn facts() -> ImageFacts {
        ImageFacts {
            image: "img".into(),
            command: vec!["sh".into()],
            runtime: "runc".into(),
            layers: vec![("base".into(), 10, 1000), ("top".into(), 2, 100)],
            total_files: 12,
            total_bytes: 1100,
        }
    }

    #[test]
    fn aggregates_files_layers_and_shares() {
        let mut a = Aggregator::new(Some(1_000));
        a.add(&rec(1_010, "/bin/busybox", FileOp::Open, 400, Some("base")));
        a.add(&rec(1_010, "/bin/busybox", FileOp::OpenExec, 400, Some("base")));
        a.add(&rec(1_020, "/data/a.txt", FileOp::Open, 60, Some("top")));
        a.add(&rec(1_021, "/data/a.txt", FileOp::Access, 60, Some("top")));
        a.add(&rec(1_022, "/data/a.txt", FileOp::Access, 60, Some("top")));
        a.add(&rec(1_023, "/data/a.txt", FileOp::Close, 60, Some("top")));
        a.add(&rec(1_030, "/etc/passwd", FileOp::Open, 50, Some("base"))); // opened, never read
        a.add(&rec(1_040, "/tmp/out", FileOp::Open, 0, None));
        let s = a.finish(Some(&facts()), ReadyBy::Exit { code: Some(0), signal: None }, 40);
        assert_eq!(s.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/bin/busybox", "/data/a.txt", "/etc/passwd", "/tmp/out"]);
        let bb = &s.files[0];
        assert_eq!((bb.opened, bb.executed, bb.reads, bb.bytes, bb.first_us), (1, 1, 0, 400, 10));
        let a_txt = &s.files[1];
        assert_eq!((a_txt.opened, a_txt.reads, a_txt.bytes), (1, 2, 60));
        assert_eq!(s.files[2].bytes, 0, "opened without a read: no bytes");
        assert_eq!((s.accessed_files, s.read_files, s.accessed_bytes, s.written_files), (3, 2, 460, 1));
        assert_eq!(s.file_share, Some(3.0 / 12.0));
        assert_eq!(s.byte_share, Some(460.0 / 1100.0));
        assert_eq!(s.layers[0].id, "base");
        assert_eq!((s.layers[0].accessed_files, s.layers[0].accessed_bytes), (2, 400));
        assert_eq!(s.layers[0].file_share, Some(0.2));
        assert_eq!(s.layers[1].byte_share, Some(0.6));
        assert!(s.definition.contains("upper bound"));
    }

    #[test]
    fn records_file_round_trips_without_inventory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.jsonl");
        let mut text = String::new();
        text += &Record::File(rec(5, "/a", FileOp::Open, 3, Some("L"))).to_line();
        text += &Record::File(rec(9, "/a", FileOp::Access, 3, Some("L"))).to_line();
        text += "{garbage\n";
        text += &Record::File(rec(7, "/b", FileOp::OpenExec, 8, Some("M"))).to_line();
        std::fs::write(&p, text).unwrap();
        let (s, st) = load(&p).unwrap();
        assert_eq!(st.malformed, 1);
        assert_eq!(s.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/a", "/b"]);
        assert_eq!(s.files[1].first_us, 2);
        assert_eq!(s.accessed_bytes, 11);
        assert_eq!(s.image_files, None);
        assert_eq!(s.layers.len(), 2);
        assert_eq!(s.layers[0].file_share, None);
        // and the summary document itself loads back unchanged
        let j = d.path().join("s.json");
        std::fs::write(&j, serde_json::to_string_pretty(&s).unwrap()).unwrap();
        assert_eq!(load(&j).unwrap().0, s);
    }

    #[test]
    fn not_a_files_output_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, "hello\nworld\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("no file-access records"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(lines in proptest::collection::vec(".{0,80}", 0..20)) {
            let text = lines.join("\n");
            let _ = read_records(Box::new(std::io::Cursor::new(text.into_bytes())), Path::new("p"));
        }

        #[test]
        fn shares_are_bounded(sizes in proptest::collection::vec((0u64..1000, 0u8..4), 1..40)) {
            let mut a = Aggregator::new(Some(0));
            let mut total = 0;
            for (i, (size, op)) in sizes.iter().enumerate() {
                total += size;
                let op = [FileOp::Open, FileOp::OpenExec, FileOp::Access, FileOp::Close][*op as usize];
                a.add(&rec(i as u64, &format!("/f{i}"), op, *size, Some("base")));
            }
            let f = ImageFacts { layers: vec![("base".into(), sizes.len() as u64, total)], total_files: sizes.len() as u64, total_bytes: total, ..Default::default() };
            let s = a.finish(Some(&f), ReadyBy::Unknown, 0);
            prop_assert!(s.file_share.unwrap() <= 1.0);
            prop_assert!(s.byte_share.unwrap() <= 1.0);
            prop_assert!(s.accessed_bytes <= total);
            prop_assert!(s.files.windows(2).all(|w| w[0].first_us <= w[1].first_us));
        }
    }
}
