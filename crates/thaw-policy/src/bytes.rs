//! Byte sizes as people type them: the one parser every thaw command uses for cache sizes, tier
//! thresholds, bandwidths and memory limits, so that `1G` means the same thing everywhere.

/// What every byte-size error tells the user is accepted.
const ACCEPTED: &str = "use a number with B, KB, MB, GB, TB, KiB, MiB, GiB, TiB or K, M, G, T";

/// Why a text is not a byte size. Each message quotes the text and says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Nothing but white space.
    #[error("empty byte size: {ACCEPTED}")]
    Empty,
    /// A minus sign in front of the number.
    #[error("{text:?} is negative: a byte size is zero or more; {ACCEPTED}")]
    Negative { text: String },
    /// Not a decimal number (letters, `nan`, `inf`, a sign, a dangling point, ...) or a number
    /// followed by a unit this parser does not know.
    #[error("{text:?} is not a byte size: {ACCEPTED}")]
    Syntax { text: String },
    /// A well-formed size of 2^64 bytes or more.
    #[error("{text:?} is too large: a byte size must be below 16 EiB (at most {} bytes)", u64::MAX)]
    TooLarge { text: String },
}

/// Parses a byte size.
///
/// The text is a decimal number, optionally with a fraction (`1.5`), then optional spaces, then
/// an optional unit; white space around the whole is ignored and the unit's case does not
/// matter:
///
/// | unit                                   | multiplier                         |
/// |----------------------------------------|------------------------------------|
/// | none, `B`                              | 1                                  |
/// | `KB`, `MB`, `GB`, `TB`                 | 1000, 1000², 1000³, 1000⁴          |
/// | `KiB`, `MiB`, `GiB`, `TiB`             | 1024, 1024², 1024³, 1024⁴          |
/// | `K`, `M`, `G`, `T` (bare letters)      | 1024, 1024², 1024³, 1024⁴          |
///
/// The bare letters are binary because that is what they mean in docker's `--memory 64m` and
/// in most memory tools, and a cache size of `1G` is far more often meant as a GiB than as 10^9
/// bytes; write `1GB` for the decimal one.
///
/// A fraction is multiplied out exactly (decimal arithmetic, no floating point, so every `u64`
/// written as a plain number comes back unchanged) and the product is rounded to the nearest
/// whole byte, halves rounding up: `1.5K` is 1536, `0.4B` is 0 and `2.5` is 3.
///
/// Errors ([`ByteSizeError`]): empty text, a minus sign, anything that is not digits with an
/// optional `.digits` (so no `nan`, `inf`, exponents or leading `+`), an unknown unit, and a
/// result that does not fit in a `u64`.
pub fn parse_bytes(s: &str) -> Result<u64, ByteSizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ByteSizeError::Empty);
    }
    let syntax = || ByteSizeError::Syntax {
        text: t.to_string(),
    };
    if t.starts_with('-') {
        return Err(ByteSizeError::Negative {
            text: t.to_string(),
        });
    }
    let int_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (int, rest) = t.split_at(int_end);
    // `.5` and `5.` are refused along with the rest: a size is digits, optionally a point and
    // more digits, which keeps the accepted language small enough to state in one error message.
    if int.is_empty() {
        return Err(syntax());
    }
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if end == 0 {
                return Err(syntax());
            }
            after.split_at(end)
        }
        None => ("", rest),
    };
    let mult = unit_multiplier(rest.trim_start()).ok_or_else(syntax)?;
    let too_large = || ByteSizeError::TooLarge {
        text: t.to_string(),
    };
    // u128 holds any u64 times 1024^4, so only the final conversion can overflow; the digit loop
    // stops early once the integer part alone is out of range.
    let mut whole: u128 = 0;
    for d in int.bytes() {
        whole = whole * 10 + u128::from(d - b'0');
        if whole > u128::from(u64::MAX) {
            return Err(too_large());
        }
    }
    let total = whole * u128::from(mult) + fraction_times(frac, mult);
    u64::try_from(total).map_err(|_| too_large())
}

/// The multiplier of a unit as written after the number (already free of leading spaces).
fn unit_multiplier(unit: &str) -> Option<u64> {
    const KIB: u64 = 1 << 10;
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => KIB,
        "m" | "mib" => KIB.pow(2),
        "g" | "gib" => KIB.pow(3),
        "t" | "tib" => KIB.pow(4),
        _ => return None,
    })
}

/// `0.<digits> * mult`, rounded to the nearest integer with halves up, computed exactly.
///
/// Multiplying the decimal fraction digit by digit from the right, like long multiplication on
/// paper, leaves the integer part of the product in the carry and the product's first fractional
/// digit as the last digit produced; that digit alone decides the rounding (>= 5 means the rest
/// is at least one half). No precision is lost however many digits the fraction has, which
/// floating point could not promise for sizes near 2^64.
fn fraction_times(digits: &str, mult: u64) -> u128 {
    let mult = u128::from(mult);
    let mut carry: u128 = 0;
    let mut first_digit: u128 = 0;
    for d in digits.bytes().rev() {
        let v = u128::from(d - b'0') * mult + carry;
        first_digit = v % 10;
        carry = v / 10;
    }
    carry + u128::from(first_digit >= 5)
}

/// Prints a byte count in the largest binary unit that divides it exactly (`64MiB`), or as a
/// plain number; [`parse_bytes`] reads every output back to the same count.
pub(crate) fn format_bytes(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;

    #[test]
    fn plain_numbers_and_b_are_bytes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("17"), Ok(17));
        assert_eq!(parse_bytes("17B"), Ok(17));
        assert_eq!(parse_bytes("17 b"), Ok(17));
        assert_eq!(parse_bytes("  4096  "), Ok(4096));
        assert_eq!(parse_bytes("007"), Ok(7));
        assert_eq!(parse_bytes(&u64::MAX.to_string()), Ok(u64::MAX));
    }

    #[test]
    fn two_letter_units_are_decimal() {
        assert_eq!(parse_bytes("2KB"), Ok(2_000));
        assert_eq!(parse_bytes("2 MB"), Ok(2_000_000));
        assert_eq!(parse_bytes("2gb"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("2Tb"), Ok(2_000_000_000_000));
    }

    #[test]
    fn iec_units_and_bare_letters_are_binary() {
        for (i, (iec, bare)) in [("KiB", "K"), ("MiB", "M"), ("GiB", "G"), ("TiB", "T")]
            .into_iter()
            .enumerate()
        {
            let want = 3 * KIB.pow(i as u32 + 1);
            for unit in [iec, bare] {
                for text in [
                    format!("3{unit}"),
                    format!("3 {unit}"),
                    format!("3{}", unit.to_lowercase()),
                    format!("3{}", unit.to_uppercase()),
                ] {
                    assert_eq!(parse_bytes(&text), Ok(want), "{text}");
                }
            }
        }
        // docker's spelling of a memory limit
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
    }

    #[test]
    fn fractions_round_to_the_nearest_byte() {
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("1.5 MB"), Ok(1_500_000));
        assert_eq!(parse_bytes("0.5KiB"), Ok(512));
        // 0.001 KiB = 1.024 bytes, 0.0005 KiB = 0.512 bytes, 0.0004 KiB = 0.4096 bytes
        assert_eq!(parse_bytes("0.001K"), Ok(1));
        assert_eq!(parse_bytes("0.0005K"), Ok(1));
        assert_eq!(parse_bytes("0.0004K"), Ok(0));
        // exact halves round up
        assert_eq!(parse_bytes("2.5"), Ok(3));
        assert_eq!(parse_bytes("2.4999999999999999999999999"), Ok(2));
        assert_eq!(parse_bytes("0.5B"), Ok(1));
        assert_eq!(parse_bytes("1.000"), Ok(1));
        // a long fraction is still exact: 1/3 GiB written out to 30 places
        assert_eq!(
            parse_bytes("0.333333333333333333333333333333GiB"),
            Ok((1u64 << 30) / 3)
        );
        // the largest value reachable with a fraction, and one past it
        assert_eq!(parse_bytes("18446744073709551614.5"), Ok(u64::MAX));
        assert!(matches!(
            parse_bytes("18446744073709551615.5"),
            Err(ByteSizeError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_text_is_refused_with_what_is_accepted() {
        assert_eq!(parse_bytes(""), Err(ByteSizeError::Empty));
        assert_eq!(parse_bytes("   "), Err(ByteSizeError::Empty));
        for neg in ["-1", "-0", "-1.5G"] {
            assert!(
                matches!(parse_bytes(neg), Err(ByteSizeError::Negative { .. })),
                "{neg}"
            );
        }
        for bad in [
            "MiB", "x", "nan", "NaN", "inf", "infinity", "1e9", "+5", ".5G", "5.", "5.G", "1..2",
            "1.2.3", "1 2", "1_000", "12XB", "1GiBs", "1 G B", "64 parsecs", "0x10", "1,5G",
            "١٢", "G1",
        ] {
            assert!(
                matches!(parse_bytes(bad), Err(ByteSizeError::Syntax { .. })),
                "{bad}: {:?}",
                parse_bytes(bad)
            );
        }
        for big in [
            "18446744073709551616",
            "99999999999999999999999999999999999999999999",
            "16777216TiB",
            "18446744073709552KB",
        ] {
            assert!(
                matches!(parse_bytes(big), Err(ByteSizeError::TooLarge { .. })),
                "{big}"
            );
        }
        assert_eq!(parse_bytes("16777215TiB"), Ok(16777215 << 40));
        assert_eq!(
            parse_bytes("64 parsecs").unwrap_err().to_string(),
            "\"64 parsecs\" is not a byte size: use a number with B, KB, MB, GB, TB, KiB, MiB, \
             GiB, TiB or K, M, G, T"
        );
        for e in [
            parse_bytes("").unwrap_err(),
            parse_bytes("-3").unwrap_err(),
            parse_bytes("99999999999999999999").unwrap_err(),
        ] {
            let m = e.to_string();
            assert!(m.starts_with(|c: char| !c.is_uppercase()), "{m}");
            assert!(!m.ends_with('.'), "{m}");
        }
    }

    #[test]
    fn format_bytes_picks_the_largest_exact_binary_unit() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(3 << 29), "1536MiB");
        assert_eq!(format_bytes(5 << 40), "5TiB");
    }

    proptest! {
        /// Every u64 survives being written as `N`, `N B`, `NB`, and, when it is a multiple of a
        /// binary unit, as the quotient with that unit in either spelling.
        #[test]
        fn byte_sizes_round_trip(n in any::<u64>(), k in 0u32..=4, spaces in 0usize..3) {
            let sp = " ".repeat(spaces);
            prop_assert_eq!(parse_bytes(&n.to_string()), Ok(n));
            prop_assert_eq!(parse_bytes(&format!("{n}{sp}B")), Ok(n));
            prop_assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
            let unit = KIB.pow(k);
            let m = n / unit * unit;
            let (iec, bare) = [("B", ""), ("KiB", "K"), ("MiB", "M"), ("GiB", "G"), ("TiB", "T")][k as usize];
            prop_assert_eq!(parse_bytes(&format!("{}{sp}{iec}", m / unit)), Ok(m));
            prop_assert_eq!(parse_bytes(&format!("{}{sp}{}", m / unit, bare.to_lowercase())), Ok(m));
        }

        /// A count written as a fraction of a binary unit (`1.5K`, `0.0009765625M`), with all the
        /// decimal digits that fraction has, parses back to exactly that count.
        #[test]
        fn fractions_in_binary_units_round_trip(n in 0u64..(1 << 50), k in 1u32..=4) {
            let unit = KIB.pow(k);
            let whole = n / unit;
            // exact decimal digits of (n % unit) / unit, which always terminate (unit is 2^10k)
            let mut rem = u128::from(n % unit);
            let mut digits = String::new();
            while rem != 0 {
                rem *= 10;
                digits.push(char::from(b'0' + (rem / u128::from(unit)) as u8));
                rem %= u128::from(unit);
            }
            let suffix = ["", "K", "M", "G", "T"][k as usize];
            let text = if digits.is_empty() { format!("{whole}{suffix}") } else { format!("{whole}.{digits}{suffix}") };
            prop_assert_eq!(parse_bytes(&text), Ok(n), "{}", text);
        }

        /// Arbitrary text never panics: it is a size or a typed error.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}|[0-9. +-]{0,30}[kKmMgGtTiIbB ]{0,4}") {
            if let Err(e) = parse_bytes(&s) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
