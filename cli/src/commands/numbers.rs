//! The checked parsers of the numeric options (clap `value_parser`s), one per kind of number,
//! shared by every sub-command: a value outside its range, NaN, an infinity, a negative, an empty
//! or a non-numeric value is refused while the arguments are parsed, with clap's message naming
//! the option and the value, and ours giving the range (exit code 2), so no command ever starts with a number it cannot use.
//!
//! | kind | parser | range |
//! |---|---|---|
//! | seconds (`--timeout`, `--duration`, `--hold`) | [`seconds`], [`seconds_up_to`] | 0 to [`MAX_SECONDS`] or less, fractions allowed |
//! | milliseconds (`--spacing-ms`, `--single-shot-ms`) | [`millis`] | 0 to [`MAX_MILLIS`] |
//! | milliseconds that must not be 0 (`--rto-ms`, `--timeout-ms`) | [`millis_nonzero`] | 1 to [`MAX_MILLIS`] |
//! | percentages (`--loss`) | [`percent`] | 0 to 100 |
//! | whole numbers (counts, capacities, versions) | [`count`] | per option |
//!
//! Each option's `--help` states its range; the messages here state the same range.

use std::time::Duration;

use clap::builder::RangedU64ValueParser;

/// The longest time a seconds option accepts: 31,536,000 s (365 days).
pub const MAX_SECONDS: u64 = 31_536_000;
/// The longest time a milliseconds option accepts: 3,600,000 ms (one hour).
pub const MAX_MILLIS: u64 = 3_600_000;

/// A time in seconds: a decimal number (`2`, `0.5`, `1e-3`) from 0 to [`MAX_SECONDS`].
pub fn seconds(text: &str) -> Result<Duration, String> {
    seconds_in(text, MAX_SECONDS)
}

/// A time in seconds from 0 to `max` (at most [`MAX_SECONDS`]), for an option with a tighter
/// range than [`seconds`].
pub fn seconds_up_to(
    max: u64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text: &str| seconds_in(text, max.min(MAX_SECONDS))
}

fn seconds_in(text: &str, max: u64) -> Result<Duration, String> {
    let refuse = || format!("not a number of seconds from 0 to {max}");
    let value: f64 = text.trim().parse().map_err(|_| refuse())?;
    // `max` is at most `MAX_SECONDS`, far below 2^53, so the conversion is exact.
    if !(value.is_finite() && (0.0..=max as f64).contains(&value)) {
        return Err(refuse());
    }
    Duration::try_from_secs_f64(value.max(0.0)).map_err(|_| refuse())
}

/// A time in whole milliseconds from 0 to [`MAX_MILLIS`].
pub fn millis(text: &str) -> Result<Duration, String> {
    millis_from(text, 0)
}

/// A time in whole milliseconds from 1 to [`MAX_MILLIS`].
pub fn millis_nonzero(text: &str) -> Result<Duration, String> {
    millis_from(text, 1)
}

fn millis_from(text: &str, min: u64) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(ms) if (min..=MAX_MILLIS).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "not a whole number of milliseconds from {min} to {MAX_MILLIS}"
        )),
    }
}

/// A percentage: a decimal number from 0 to 100.
pub fn percent(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && (0.0..=100.0).contains(&p) => Ok(p.max(0.0)),
        _ => Err("not a percentage from 0 to 100".to_string()),
    }
}

/// A whole number from `min` to `max` (a count, a capacity, a version), as a `T`: clap's ranged
/// parser, whose message reads "`N` is not in `MIN..=MAX`".
pub fn count<T>(min: u64, max: u64) -> RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::error::Error + Send + Sync + 'static,
{
    RangedU64ValueParser::<T>::new().range(min..=max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_in_range_or_refused() {
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert_eq!(seconds("-0"), Ok(Duration::ZERO));
        assert_eq!(seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(seconds("1e-3"), Ok(Duration::from_millis(1)));
        assert_eq!(seconds("31536000"), Ok(Duration::from_secs(MAX_SECONDS)));
        assert_eq!(seconds_up_to(3600)("3600"), Ok(Duration::from_secs(3600)));
        assert!(seconds_up_to(3600)("3600.5")
            .unwrap_err()
            .contains("from 0 to 3600"));
        for bad in [
            "-1",
            "-1e-9",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e300",
            "31536000.5",
            "18446744073709551615",
            "",
            " ",
            "ten",
            "0x10",
        ] {
            let e = seconds(bad).unwrap_err();
            assert!(e.contains("from 0 to 31536000"), "{bad}: {e}");
        }
    }

    #[test]
    fn millis_in_range_or_refused() {
        assert_eq!(millis("0"), Ok(Duration::ZERO));
        assert_eq!(millis("3600000"), Ok(Duration::from_secs(3600)));
        assert_eq!(millis_nonzero("1"), Ok(Duration::from_millis(1)));
        assert!(millis_nonzero("0")
            .unwrap_err()
            .contains("from 1 to 3600000"));
        for bad in ["-1", "3600001", "18446744073709551615", "1.5", "nan", ""] {
            assert!(
                millis(bad).unwrap_err().contains("from 0 to 3600000"),
                "{bad}"
            );
        }
    }

    #[test]
    fn percent_in_range_or_refused() {
        assert_eq!(percent("0"), Ok(0.0));
        assert_eq!(percent("12.5"), Ok(12.5));
        assert_eq!(percent("100"), Ok(100.0));
        for bad in ["-1", "100.1", "nan", "inf", "1e300", ""] {
            assert!(percent(bad).is_err(), "{bad}");
        }
    }
}
