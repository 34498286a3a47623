//! thaw's own request trace: JSON lines of `thaw_record::Record`.

use std::io::BufRead;
use std::path::Path;

use thaw_record::{ObjectKind, Record, RequestRecord};

use super::lines::LineReader;
use super::{next_text_line, EventSource, ReadOptions, ReadStats, Tally, TraceError};
use crate::event::{image_id, key_of_digest, stable_hash, Event, Method};

/// Reads a thaw trace (plain or zstd-compressed).
pub struct ThawReader {
    lines: LineReader<Box<dyn BufRead + Send>>,
    buf: Vec<u8>,
    tally: Tally,
}

impl ThawReader {
    pub fn open(path: &Path, opts: ReadOptions) -> Result<ThawReader, TraceError> {
        let tally = Tally::new(path, opts);
        let input = super::open_text(path).map_err(|e| tally.io(e))?;
        Ok(Self::from_reader(input, tally))
    }

    /// Reads from any buffered reader; `name` is used in error positions.
    pub fn from_bufread(
        input: Box<dyn BufRead + Send>,
        name: &Path,
        opts: ReadOptions,
    ) -> ThawReader {
        Self::from_reader(input, Tally::new(name, opts))
    }

    fn from_reader(input: Box<dyn BufRead + Send>, tally: Tally) -> ThawReader {
        ThawReader {
            lines: LineReader::new(input),
            buf: Vec::new(),
            tally,
        }
    }
}

/// Converts one thaw request record into an event.
pub fn request_to_event(r: &RequestRecord) -> Event {
    request_into_event(r.clone())
}

/// Converts one thaw request record into an event, moving its strings.
pub fn request_into_event(r: RequestRecord) -> Event {
    let cache_access = r.is_cache_access();
    let method = Method::parse(&r.method);
    let layers = r
        .layers
        .iter()
        .map(|l| (key_of_digest(&l.digest), l.size))
        .collect();
    let key = match (&r.digest, &r.repo, r.tag.as_ref()) {
        (Some(d), _, _) => key_of_digest(d),
        (None, Some(repo), Some(tag)) => stable_hash(&[repo, tag]),
        (None, Some(repo), None) => stable_hash(&[repo]),
        _ => 0,
    };
    let reference = r.tag.or(r.digest);
    let image = match (r.kind, &r.repo, &reference) {
        (ObjectKind::Manifest, Some(repo), Some(rf)) => Some(image_id(repo, rf)),
        _ => None,
    };
    Event {
        time_us: r.ts_us,
        client: r.client.or(r.principal),
        repo: r.repo,
        kind: r.kind,
        key,
        reference,
        size: r.size.unwrap_or(r.bytes_sent),
        method,
        status: r.status,
        image,
        cache_access,
        layers,
    }
}

impl EventSource for ThawReader {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            let Some((pos, text)) = next_text_line(&mut self.lines, &mut self.buf, &mut self.tally)? else {
                return Ok(None);
            };
            // Fast path: a request record parsed straight into its struct. The internally tagged
            // `Record` enum makes serde buffer the whole object before choosing the variant,
            // which costs more than the parse itself; the tag is checked here instead, and any
            // line the fast path does not take goes through `Record::from_line` unchanged.
            if text.contains("\"type\":\"request\"") {
                if let Ok(r) = serde_json::from_str::<RequestRecord>(text) {
                    if r.v <= thaw_record::SCHEMA_VERSION {
                        self.tally.stats.events += 1;
                        return Ok(Some(request_into_event(r)));
                    }
                }
            }
            match Record::from_line(text) {
                Ok(Record::Request(r)) => {
                    self.tally.stats.events += 1;
                    return Ok(Some(request_into_event(r)));
                }
                Ok(Record::File(_)) => self.tally.stats.skipped += 1,
                Err(e) => self.tally.malformed(pos, e.to_string())?,
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
    use crate::read::Position;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use thaw_record::{CacheOutcome, LayerRef, SCHEMA_VERSION};

    pub(crate) fn rec(ts: u64, kind: ObjectKind, digest: &str) -> RequestRecord {
        RequestRecord {
            v: SCHEMA_VERSION,
            ts_us: ts,
            client: Some("10.0.0.1".into()),
            principal: None,
            user_agent: None,
            upstream: None,
            repo: Some("web/app".into()),
            tag: if kind == ObjectKind::Manifest {
                Some("v1".into())
            } else {
                None
            },
            digest: Some(digest.into()),
            kind,
            size: Some(100),
            bytes_sent: 100,
            method: "GET".into(),
            status: 200,
            duration_us: 5,
            outcome: CacheOutcome::Hit,
            range: None,
            layers: if kind == ObjectKind::Manifest {
                vec![LayerRef {
                    digest: format!("sha256:{}", "c".repeat(64)),
                    size: 7,
                }]
            } else {
                vec![]
            },
        }
    }

    fn read_all(text: &str, strict: bool) -> (Vec<Event>, ReadStats, Option<TraceError>) {
        let input: Box<dyn BufRead + Send> =
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let mut r =
            ThawReader::from_bufread(input, &PathBuf::from("t.jsonl"), ReadOptions { strict });
        let mut out = Vec::new();
        loop {
            match r.next_event() {
                Ok(Some(e)) => out.push(e),
                Ok(None) => return (out, r.stats(), None),
                Err(e) => return (out, r.stats(), Some(e)),
            }
        }
    }

    #[test]
    fn reads_requests_and_counts_garbage() {
        let d = format!("sha256:{}", "a".repeat(64));
        let m = Record::Request(rec(1, ObjectKind::Manifest, &d)).to_line();
        let b = Record::Request(rec(2, ObjectKind::Blob, &d)).to_line();
        let text = format!("{m}not json\n\n{b}{{\"type\":\"request\"}}\n");
        let (evs, stats, err) = read_all(&text, false);
        assert!(err.is_none());
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].image, Some(image_id("web/app", "v1")));
        assert_eq!(evs[0].layers.len(), 1);
        assert_eq!(evs[1].key, key_of_digest(&d));
        assert!(evs[1].cache_access);
        assert_eq!(stats.malformed, 2);
        assert_eq!(stats.samples[0].position, Position::Line(2));
        assert_eq!(stats.samples[1].position, Position::Line(5));
        assert_eq!(stats.skipped, 1);
        let (_, _, err) = read_all(&text, true);
        assert!(matches!(err, Some(TraceError::Malformed(m)) if m.position == Position::Line(2)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let input: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(data));
            let mut r = ThawReader::from_bufread(input, &PathBuf::from("x"), ReadOptions::default());
            while let Ok(Some(_)) = r.next_event() {}
            let s = r.stats();
            prop_assert_eq!(s.records, s.events + s.skipped + s.malformed);
        }
    }
}
