//! The CNCF distribution registry's JSON log lines (`log.formatter: json`).
//!
//! The registry logs one line per finished request with flat, dotted keys (`http.request.uri`,
//! `http.response.status`, ...) and many other lines (startup, storage driver, warnings). Lines
//! that are JSON but carry no response status are not requests: they are counted as skipped, not
//! as malformed. `http.response.duration` is a Go duration string ("1.5ms"); a bare number is read
//! as nanoseconds, which is how Go marshals a `time.Duration` when a formatter does not call
//! `String()`.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use super::lines::LineReader;
use super::{
    http_event, next_text_line, EventSource, NumOrStr, ReadOptions, ReadStats, Tally, TraceError,
};
use crate::event::{parse_go_duration_us, parse_rfc3339_us, Event};

#[derive(Debug, Deserialize)]
struct LogLine {
    #[serde(default)]
    time: Option<String>,
    #[serde(rename = "http.request.method", default)]
    method: Option<String>,
    #[serde(rename = "http.request.uri", default)]
    uri: Option<String>,
    #[serde(rename = "http.request.remoteaddr", default)]
    remoteaddr: Option<String>,
    #[serde(rename = "http.request.useragent", default)]
    #[allow(dead_code)] // parsed so that a wrongly typed value is reported; not analysed yet
    useragent: Option<String>,
    #[serde(rename = "http.response.status", default)]
    status: Option<NumOrStr>,
    #[serde(rename = "http.response.written", default)]
    written: Option<NumOrStr>,
    #[serde(rename = "http.response.duration", default)]
    duration: Option<NumOrStr>,
}

/// Reads distribution registry JSON logs.
pub struct DistributionReader {
    lines: LineReader<Box<dyn BufRead + Send>>,
    buf: Vec<u8>,
    tally: Tally,
}

impl DistributionReader {
    pub fn open(path: &Path, opts: ReadOptions) -> Result<DistributionReader, TraceError> {
        let tally = Tally::new(path, opts);
        let input = super::open_text(path).map_err(|e| tally.io(e))?;
        Ok(DistributionReader {
            lines: LineReader::new(input),
            buf: Vec::new(),
            tally,
        })
    }

    pub fn from_bufread(
        input: Box<dyn BufRead + Send>,
        name: &Path,
        opts: ReadOptions,
    ) -> DistributionReader {
        DistributionReader {
            lines: LineReader::new(input),
            buf: Vec::new(),
            tally: Tally::new(name, opts),
        }
    }
}

/// Parses one log line: `Ok(None)` for a valid line that is not a request log.
fn parse_line(text: &str) -> Result<Option<Event>, String> {
    let l: LogLine = serde_json::from_str(text).map_err(|e| format!("not a json log line: {e}"))?;
    let Some(status) = l.status else {
        return Ok(None);
    };
    let status = status.as_u64("http.response.status")?;
    let status = u16::try_from(status)
        .map_err(|_| format!("http.response.status {status} is out of range"))?;
    let time = l.time.ok_or("request log line without \"time\"")?;
    let time_us = parse_rfc3339_us(&time)?;
    let method = l
        .method
        .ok_or("request log line without \"http.request.method\"")?;
    let uri = l
        .uri
        .ok_or("request log line without \"http.request.uri\"")?;
    let written = match &l.written {
        Some(w) => w.as_u64("http.response.written")?,
        None => 0,
    };
    // Validated even though the event does not carry it: a broken duration means a broken line.
    match &l.duration {
        Some(NumOrStr::Str(s)) => {
            parse_go_duration_us(s)?;
        }
        Some(n @ NumOrStr::Num(_)) => {
            n.as_u64("http.response.duration")?;
        }
        None => {}
    }
    http_event(
        time_us,
        &method,
        &uri,
        l.remoteaddr.as_deref(),
        status,
        written,
    )
    .map(Some)
}

impl EventSource for DistributionReader {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            let Some((pos, text)) = next_text_line(&mut self.lines, &mut self.buf, &mut self.tally)? else {
                return Ok(None);
            };
            match parse_line(text) {
                Ok(Some(ev)) => {
                    self.tally.stats.events += 1;
                    return Ok(Some(ev));
                }
                Ok(None) => self.tally.stats.skipped += 1,
                Err(why) => self.tally.malformed(pos, why)?,
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
    use crate::event::{key_of_digest, ObjectKind};
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn reader(text: &str) -> DistributionReader {
        let input: Box<dyn BufRead + Send> =
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        DistributionReader::from_bufread(
            input,
            &PathBuf::from("registry.log"),
            ReadOptions::default(),
        )
    }

    #[test]
    fn reads_request_lines() {
        let d = format!("sha256:{}", "e".repeat(64));
        let text = format!(
            concat!(
                "{{\"level\":\"info\",\"msg\":\"listening on [::]:5000\",\"time\":\"2024-01-02T03:04:05Z\"}}\n",
                "{{\"time\":\"2024-01-02T03:04:06.5+01:00\",\"http.request.method\":\"GET\",\"http.request.uri\":\"/v2/library/alpine/blobs/{d}\",",
                "\"http.request.remoteaddr\":\"172.17.0.1:40000\",\"http.request.useragent\":\"skopeo\",\"http.response.status\":200,",
                "\"http.response.written\":3000,\"http.response.duration\":\"1.5ms\",\"msg\":\"response completed\"}}\n",
                "{{\"time\":\"2024-01-02T03:04:07Z\",\"http.request.method\":\"HEAD\",\"http.request.uri\":\"/v2/library/alpine/manifests/3\",",
                "\"http.response.status\":\"200\",\"http.response.duration\":1500000}}\n",
                "{{\"time\":\"bad\",\"http.request.method\":\"GET\",\"http.request.uri\":\"/v2/x/blobs/y\",\"http.response.status\":200}}\n",
                "{{\"time\":\"2024-01-02T03:04:07Z\",\"http.request.method\":\"GET\",\"http.request.uri\":\"/v2/x/blobs/y\",\"http.response.status\":200,\"http.response.duration\":\"fast\"}}\n",
                "{{ truncated\n",
            ),
            d = d
        );
        let mut r = reader(&text);
        let a = r.next_event().unwrap().unwrap();
        assert_eq!(a.kind, ObjectKind::Blob);
        assert_eq!(a.key, key_of_digest(&d));
        assert_eq!(a.size, 3000);
        assert_eq!(a.client.as_deref(), Some("172.17.0.1"));
        assert_eq!(
            a.time_us,
            crate::event::parse_rfc3339_us("2024-01-02T02:04:06.5Z").unwrap()
        );
        assert!(a.cache_access);
        let b = r.next_event().unwrap().unwrap();
        assert_eq!(b.kind, ObjectKind::Manifest);
        assert!(!b.cache_access, "HEAD is not an access");
        assert!(r.next_event().unwrap().is_none());
        let s = r.stats();
        assert_eq!((s.events, s.skipped, s.malformed), (2, 1, 3));
        assert_eq!(s.samples[0].position, Position::Line(4));
        assert!(
            s.samples[1].why.contains("duration"),
            "{}",
            s.samples[1].why
        );
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(lines in proptest::collection::vec(".{0,120}", 0..20)) {
            let mut r = reader(&lines.join("\n"));
            while let Ok(Some(_)) = r.next_event() {}
            let s = r.stats();
            prop_assert_eq!(s.records, s.events + s.skipped + s.malformed);
        }
    }
}
