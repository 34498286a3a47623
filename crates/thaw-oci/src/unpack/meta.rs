//! Pure parsing of what a tar entry says about itself: PAX extended-header records and entry
//! paths. Kept free of I/O so the fuzz targets and property tests can reach them directly.

use std::fmt;

/// One `key=value` record of a PAX extended header (POSIX.1-2001 `pax` format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxRecord<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A PAX header that does not follow the `"%d %s=%s\n"` record format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPax(pub &'static str);

impl fmt::Display for BadPax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Splits a PAX extended header into its records. Each record is `LEN SP KEY = VALUE LF`, where
/// LEN counts the whole record including its own digits; values may hold any byte (xattr values
/// are binary), which is why the length, not the newline, delimits a record.
pub fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, BadPax> {
    let mut out = Vec::new();
    // GNU tar pads some headers with NULs after the last record.
    while !data.is_empty() && data.iter().any(|&b| b != 0) {
        let sp = data
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or(BadPax("pax record has no length field"))?;
        let digits = &data[..sp];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(BadPax("pax record length is not a decimal number"));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BadPax("pax record length is too large"))?;
        if len <= sp + 1 || len > data.len() {
            return Err(BadPax("pax record length is outside the header"));
        }
        let record = &data[sp + 1..len];
        let Some((&b'\n', kv)) = record.split_last() else {
            return Err(BadPax("pax record does not end with a newline"));
        };
        let eq = kv.iter().position(|&b| b == b'=').ok_or(BadPax("pax record has no '='"))?;
        if eq == 0 {
            return Err(BadPax("pax record has an empty key"));
        }
        out.push(PaxRecord { key: &kv[..eq], value: &kv[eq + 1..] });
        data = &data[len..];
    }
    Ok(out)
}

/// Parses a PAX time (`[-]SECONDS[.FRACTION]`) into seconds and nanoseconds.
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.25 is 1.25 seconds before the epoch: -2 s + 0.75 s.
        if nanos == 0 {
            Some((-secs, 0))
        } else {
            Some((-secs - 1, 1_000_000_000 - nanos))
        }
    } else {
        Some((secs, nanos))
    }
}

/// Why an entry path cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    Absolute,
    DotDot,
    Nul,
    TooLong,
}

/// Turns an archive path into its components below the root: `.` and empty components are
/// dropped (`./usr//bin/` is `usr/bin`), and an absolute path, a `..` component or a NUL byte is
/// refused rather than neutralised, so a hostile archive fails loudly instead of unpacking into
/// a place its author did not name.
pub fn components(raw: &[u8], max_len: usize) -> Result<Vec<&[u8]>, PathProblem> {
    if raw.len() > max_len {
        return Err(PathProblem::TooLong);
    }
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathProblem::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// What a whiteout entry's file name asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// `.wh.NAME`: hide NAME from the layers below.
    Remove(&'a [u8]),
    /// `.wh..wh..opq`: hide everything the layers below have in this directory.
    Opaque,
    /// Another `.wh..wh.` name: reserved by the spec (aufs metadata such as `.wh..wh.plnk`),
    /// never extracted.
    Reserved,
    /// `.wh.`, `.wh..` or `.wh...`: a whiteout of nothing, or of a path outside the directory.
    Invalid,
}

/// Classifies a file name: `None` for an ordinary name.
pub fn whiteout(name: &[u8]) -> Option<Whiteout<'_>> {
    let rest = name.strip_prefix(b".wh.")?;
    Some(match rest {
        b".wh..opq" => Whiteout::Opaque,
        r if r.starts_with(b".wh.") => Whiteout::Reserved,
        b"" | b"." | b".." => Whiteout::Invalid,
        r => Whiteout::Remove(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(k: &str, v: &[u8]) -> Vec<u8> {
        // The length counts its own digits, so find the fixed point.
        let body = 1 + k.len() + 1 + v.len() + 1;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut r = format!("{len} {k}=").into_bytes();
        r.extend_from_slice(v);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    #[test]
    fn pax_records() {
        let mut d = record("path", b"a/b");
        d.extend(record("SCHILY.xattr.user.x", b"\0\n=\xff"));
        d.extend([0u8; 7]);
        let r = parse_pax(&d).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].value, b"\0\n=\xff");
        for bad in [&b"5 a=b"[..], b"x a=b\n", b"99 a=b\n", b"6 ab\n\n", b"4 =\n", b"3 \n", b"7 a=bc\r"] {
            assert!(parse_pax(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
        assert_eq!(parse_pax_time(b".5"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(components(b"./usr//bin/./sh", 100).unwrap(), vec![&b"usr"[..], b"bin", b"sh"]);
        assert_eq!(components(b"./", 100).unwrap(), Vec::<&[u8]>::new());
        assert_eq!(components(b"/etc/passwd", 100), Err(PathProblem::Absolute));
        assert_eq!(components(b"a/../../x", 100), Err(PathProblem::DotDot));
        assert_eq!(components(b"a/..", 100), Err(PathProblem::DotDot));
        assert_eq!(components(b"a\0b", 100), Err(PathProblem::Nul));
        assert_eq!(components(b"abc", 2), Err(PathProblem::TooLong));
        assert_eq!(components(b"a/...b/..c", 100).unwrap().len(), 3);
    }

    #[test]
    fn whiteouts() {
        assert_eq!(whiteout(b".wh.foo"), Some(Whiteout::Remove(b"foo")));
        assert_eq!(whiteout(b".wh..wh..opq"), Some(Whiteout::Opaque));
        assert_eq!(whiteout(b".wh..wh.plnk"), Some(Whiteout::Reserved));
        assert_eq!(whiteout(b".wh.."), Some(Whiteout::Invalid));
        assert_eq!(whiteout(b".wh."), Some(Whiteout::Invalid));
        assert_eq!(whiteout(b"foo.wh.x"), None);
    }

    proptest! {
        #[test]
        fn pax_never_panics(d in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_pax(&d);
        }

        #[test]
        fn pax_round_trips(recs in proptest::collection::vec(("[a-zA-Z.]{1,20}", proptest::collection::vec(any::<u8>(), 0..200)), 0..8)) {
            let mut d = Vec::new();
            for (k, v) in &recs {
                d.extend(record(k, v));
            }
            let got = parse_pax(&d).unwrap();
            prop_assert_eq!(got.len(), recs.len());
            for (g, (k, v)) in got.iter().zip(&recs) {
                prop_assert_eq!(g.key, k.as_bytes());
                prop_assert_eq!(g.value, &v[..]);
            }
        }

        /// Components never contain '/', NUL, '.' or '..', whatever the input.
        #[test]
        fn components_are_safe(raw in proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'.'), Just(0u8), Just(b'a')], 0..40)) {
            if let Ok(cs) = components(&raw, 4096) {
                for c in cs {
                    prop_assert!(!c.is_empty() && c != b"." && c != b"..");
                    prop_assert!(!c.contains(&b'/') && !c.contains(&0));
                }
            }
        }
    }
}
