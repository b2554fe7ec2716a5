//! Durations as people write them and as Go prints them: the one place
//! pleg formats (`3m5s`, `1.5s`, `250ms`, as in the kubelet's messages) and
//! parses (`500ms`, `1s`, `1.5s`, `3m`, `1h`, `1m30s`, for flags) them.

use std::fmt;
use std::time::Duration;

/// Formats a duration the way Go's `time.Duration` prints: `3m5s`, `3m0s`,
/// `1h0m0s`, `1.5s`, `250ms`, `0s`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(pleg::duration::format(Duration::from_secs(185)), "3m5s");
/// assert_eq!(pleg::duration::format(Duration::from_millis(1500)), "1.5s");
/// ```
pub fn format(d: Duration) -> String {
    GoDuration(d).to_string()
}

/// A duration that displays the way Go prints it (see [`format()`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            return write_fraction(f, nanos, 1_000, "µs");
        }
        if nanos < 1_000_000_000 {
            return write_fraction(f, nanos, 1_000_000, "ms");
        }
        let total_secs = self.0.as_secs();
        let hours = total_secs / 3600;
        let minutes = (total_secs % 3600) / 60;
        if hours > 0 {
            write!(f, "{hours}h{minutes}m")?;
        } else if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        let secs_nanos =
            u128::from(total_secs % 60) * 1_000_000_000 + u128::from(self.0.subsec_nanos());
        write_fraction(f, secs_nanos, 1_000_000_000, "s")
    }
}

fn write_fraction(
    f: &mut fmt::Formatter<'_>,
    value: u128,
    unit: u128,
    suffix: &str,
) -> fmt::Result {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return write!(f, "{whole}{suffix}");
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    write!(f, "{whole}.{}{suffix}", digits.trim_end_matches('0'))
}

/// Why a duration did not parse. The message quotes what was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing was given.
    #[error("empty duration; use a number with a unit: 500ms, 1s, 3m, 1h")]
    Empty,
    /// A number without a unit.
    #[error("{0:?}: missing unit; use ms, s, m or h")]
    MissingUnit(String),
    /// Something that is not a number where one was expected.
    #[error("{0:?}: expected a number followed by ms, s, m or h")]
    NotANumber(String),
    /// A unit pleg does not know.
    #[error("{given:?}: unknown unit {unit:?}; use ms, s, m or h")]
    UnknownUnit {
        /// The whole text.
        given: String,
        /// The unit.
        unit: String,
    },
    /// Zero or less.
    #[error("{0:?}: must be greater than zero")]
    NotPositive(String),
    /// More than a `Duration` holds.
    #[error("{0:?}: out of range")]
    OutOfRange(String),
}

/// Parses `250ms`, `1s`, `1.5s`, `3m`, `1h`, `1m30s` (also `ns` and `us`
/// or `µs`). The result is greater than zero.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(pleg::duration::parse("1m30s"), Ok(Duration::from_secs(90)));
/// assert!(pleg::duration::parse("5").is_err());
/// ```
///
/// # Errors
/// A [`ParseError`] naming the text: empty, a number without a unit, an unknown unit, zero or less, or more than a `Duration` holds.
pub fn parse(raw: &str) -> Result<Duration, ParseError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut total = 0f64;
    let mut rest = raw;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| ParseError::MissingUnit(raw.to_string()))?;
        let (number, tail) = rest.split_at(split);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let value: f64 = number
            .parse()
            .map_err(|_| ParseError::NotANumber(raw.to_string()))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(ParseError::UnknownUnit {
                    given: raw.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        total += value * scale;
        rest = next;
    }
    if !(total.is_finite() && total > 0.0) {
        return Err(ParseError::NotPositive(raw.to_string()));
    }
    Duration::try_from_secs_f64(total).map_err(|_| ParseError::OutOfRange(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(180), "3m0s"),
            (Duration::from_secs(185), "3m5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want, "{d:?}");
        }
    }

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "5", "s", "-1s", "0s", "1d", "1.2.3s", "ms"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse("5").map_err(|e| e.to_string()),
            Err("\"5\": missing unit; use ms, s, m or h".to_string())
        );
    }

    #[test]
    fn what_is_printed_parses_back() {
        for d in [
            Duration::from_millis(250),
            Duration::from_millis(1500),
            Duration::from_secs(185),
            Duration::from_secs(3723),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
