//! libCacheSim's `oracleGeneral` binary format: 24-byte little-endian records
//! `u32 time (s), u64 object id, u32 size, i64 next access (virtual time, -1 = never)`, optionally
//! zstd-compressed.
//!
//! Plain files are memory-mapped and decoded in place: no copy, no allocation per record, which is
//! what lets the simulator replay tens of millions of requests per second. Compressed files are
//! streamed through a zstd decoder with a fixed buffer. A trailing partial record is reported as
//! malformed.

use std::io::{ErrorKind, Read};
use std::path::Path;

use memmap2::Mmap;

use super::{EventSource, Position, ReadOptions, ReadStats, Tally, TraceError, ZSTD_MAGIC};
use crate::event::Event;

pub const ORACLE_RECORD_BYTES: usize = 24;

/// One `oracleGeneral` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleRecord {
    pub time: u32,
    pub id: u64,
    pub size: u32,
    pub next: i64,
}

impl OracleRecord {
    pub fn decode(b: &[u8; ORACLE_RECORD_BYTES]) -> OracleRecord {
        OracleRecord {
            time: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            id: u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]),
            size: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            next: i64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
        }
    }

    pub fn encode(&self) -> [u8; ORACLE_RECORD_BYTES] {
        let mut b = [0u8; ORACLE_RECORD_BYTES];
        b[0..4].copy_from_slice(&self.time.to_le_bytes());
        b[4..12].copy_from_slice(&self.id.to_le_bytes());
        b[12..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    pub fn to_event(self) -> Event {
        Event::access(
            u64::from(self.time) * 1_000_000,
            self.id,
            u64::from(self.size),
        )
    }
}

enum Input {
    Mapped {
        map: Option<Mmap>,
        pos: usize,
    },
    Zstd {
        dec: Box<dyn Read + Send>,
        eof: bool,
    },
}

/// Reads an `oracleGeneral` file.
pub struct OracleReader {
    input: Input,
    index: u64,
    tally: Tally,
}

impl OracleReader {
    pub fn open(path: &Path, opts: ReadOptions) -> Result<OracleReader, TraceError> {
        let tally = Tally::new(path, opts);
        let mut f = std::fs::File::open(path).map_err(|e| tally.io(e))?;
        let mut magic = [0u8; 4];
        let n = read_full(&mut f, &mut magic).map_err(|e| tally.io(e))?;
        let input = if n == 4 && magic == ZSTD_MAGIC {
            let f = std::fs::File::open(path).map_err(|e| tally.io(e))?;
            let dec = zstd::stream::read::Decoder::new(f).map_err(|e| tally.io(e))?;
            Input::Zstd {
                dec: Box::new(std::io::BufReader::with_capacity(1 << 20, dec)),
                eof: false,
            }
        } else {
            let len = f.metadata().map_err(|e| tally.io(e))?.len();
            let map = if len == 0 {
                None
            } else {
                // SAFETY: the map is read-only and private to this reader. Mapping is only unsound
                // if another process truncates or rewrites the file while it is mapped; trace files
                // are written once and then read, and a concurrent truncation would at worst make
                // this process fault, which the caller accepts by pointing thaw at a live file.
                Some(unsafe { Mmap::map(&f) }.map_err(|e| tally.io(e))?)
            };
            if let Some(m) = &map {
                // Sequential access: let the kernel read ahead aggressively.
                let _ = m.advise(memmap2::Advice::Sequential);
            }
            Input::Mapped { map, pos: 0 }
        };
        Ok(OracleReader {
            input,
            index: 0,
            tally,
        })
    }

    /// The next record; `Ok(None)` at the end.
    #[inline]
    pub fn next_record(&mut self) -> Result<Option<OracleRecord>, TraceError> {
        match &mut self.input {
            Input::Mapped { map, pos } => {
                let Some(m) = map.as_ref() else {
                    return Ok(None);
                };
                let rest = &m[*pos..];
                if rest.len() >= ORACLE_RECORD_BYTES {
                    let rec = OracleRecord::decode(
                        rest[..ORACLE_RECORD_BYTES].try_into().expect("24 bytes"),
                    );
                    *pos += ORACLE_RECORD_BYTES;
                    self.index += 1;
                    self.tally.stats.records += 1;
                    self.tally.stats.events += 1;
                    return Ok(Some(rec));
                }
                if rest.is_empty() {
                    return Ok(None);
                }
                let left = rest.len();
                *pos = m.len();
                self.tally.stats.records += 1;
                self.tally.malformed(
                    Position::Record(self.index),
                    format!("file ends with a partial record of {left} bytes"),
                )?;
                Ok(None)
            }
            Input::Zstd { dec, eof } => {
                if *eof {
                    return Ok(None);
                }
                let mut b = [0u8; ORACLE_RECORD_BYTES];
                let n = read_full(dec, &mut b).map_err(|e| TraceError::Io {
                    path: self.tally.path.clone(),
                    source: e,
                })?;
                if n == ORACLE_RECORD_BYTES {
                    self.index += 1;
                    self.tally.stats.records += 1;
                    self.tally.stats.events += 1;
                    return Ok(Some(OracleRecord::decode(&b)));
                }
                *eof = true;
                if n > 0 {
                    self.tally.stats.records += 1;
                    self.tally.malformed(
                        Position::Record(self.index),
                        format!("file ends with a partial record of {n} bytes"),
                    )?;
                }
                Ok(None)
            }
        }
    }

    /// Fills `out` (cleared first) with up to `max` records; returns how many.
    pub fn fill(&mut self, out: &mut Vec<OracleRecord>, max: usize) -> Result<usize, TraceError> {
        out.clear();
        if let Input::Mapped { map: Some(m), pos } = &mut self.input {
            // Fast path: decode whole records straight from the map.
            let whole = (m.len() - *pos) / ORACLE_RECORD_BYTES;
            let n = whole.min(max);
            let bytes = &m[*pos..*pos + n * ORACLE_RECORD_BYTES];
            out.extend(
                bytes
                    .chunks_exact(ORACLE_RECORD_BYTES)
                    .map(|c| OracleRecord::decode(c.try_into().expect("24 bytes"))),
            );
            *pos += n * ORACLE_RECORD_BYTES;
            self.index += n as u64;
            self.tally.stats.records += n as u64;
            self.tally.stats.events += n as u64;
            if n > 0 {
                return Ok(n);
            }
        }
        while out.len() < max {
            match self.next_record()? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out.len())
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl EventSource for OracleReader {
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        Ok(self.next_record()?.map(OracleRecord::to_event))
    }

    fn stats(&self) -> ReadStats {
        self.tally.stats.clone()
    }
}

/// Writes records in `oracleGeneral` format.
pub fn write_records(w: &mut dyn std::io::Write, recs: &[OracleRecord]) -> std::io::Result<()> {
    for r in recs {
        w.write_all(&r.encode())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(path: &Path) -> (Vec<OracleRecord>, ReadStats) {
        let mut r = OracleReader::open(path, ReadOptions::default()).unwrap();
        let mut v = Vec::new();
        while let Some(x) = r.next_record().unwrap() {
            v.push(x);
        }
        (v, r.stats())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn plain_and_zstd_round_trip(recs in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u32>(), any::<i64>()), 0..50), tail in 0usize..24) {
            let recs: Vec<OracleRecord> = recs.into_iter().map(|(time, id, size, next)| OracleRecord { time, id, size, next }).collect();
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = Vec::new();
            write_records(&mut bytes, &recs).unwrap();
            bytes.extend(std::iter::repeat_n(7u8, tail));
            let plain = dir.path().join("t.oracleGeneral");
            std::fs::write(&plain, &bytes).unwrap();
            let z = dir.path().join("t.oracleGeneral.zst");
            std::fs::write(&z, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
            for p in [&plain, &z] {
                let (got, stats) = read_all(p);
                prop_assert_eq!(&got, &recs);
                prop_assert_eq!(stats.malformed, u64::from(tail > 0));
            }
            let mut r = OracleReader::open(&plain, ReadOptions::default()).unwrap();
            let mut buf = Vec::new();
            let mut all = Vec::new();
            while r.fill(&mut buf, 7).unwrap() > 0 {
                all.extend_from_slice(&buf);
            }
            prop_assert_eq!(&all, &recs);
        }
    }

    #[test]
    fn strict_mode_fails_on_partial_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, [0u8; 30]).unwrap();
        let mut r = OracleReader::open(&p, ReadOptions { strict: true }).unwrap();
        assert!(r.next_record().unwrap().is_some());
        assert!(
            matches!(r.next_record(), Err(TraceError::Malformed(m)) if m.position == Position::Record(1))
        );
        let empty = dir.path().join("e");
        std::fs::write(&empty, []).unwrap();
        assert_eq!(read_all(&empty).0.len(), 0);
    }
}
