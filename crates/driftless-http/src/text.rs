//! Times, ages and ratios as people read them (the report and the `driftless` CLI share
//! these).

use driftless::Timestamp;

/// A timestamp as `2025-01-31 12:00:05 UTC`.
///
/// ```
/// use driftless::Timestamp;
/// assert_eq!(driftless_http::text::utc(Timestamp(86_400_000 + 5_000)), "1970-01-02 00:00:05 UTC");
/// ```
#[must_use]
pub fn utc(t: Timestamp) -> String {
    let secs = t.0 / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The same moment as [`utc`], in the form of HTML's `<time datetime>`: `2025-01-31T12:00:05Z`.
#[must_use]
pub fn iso8601(t: Timestamp) -> String {
    let secs = t.0 / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Seconds as `0.4 s`, `12 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h` (`-` for a negative or
/// unknown value).
///
/// ```
/// assert_eq!(driftless_http::text::age(61.0), "1 min 1 s");
/// ```
#[must_use]
pub fn age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_string();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3_599 => format!("{} min {} s", s / 60, s % 60),
        3_600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A ratio as a percentage with three decimals: `0.025` is `2.500 %`.
#[must_use]
pub fn percent(ratio: f64) -> String {
    format!("{:.3} %", ratio * 100.0)
}

/// A count with thin groups of three digits: `12,345`.
#[must_use]
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(Timestamp(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(Timestamp(1_700_000_000_000)), "2023-11-14 22:13:20 UTC");
        assert_eq!(iso8601(Timestamp(1_700_000_000_000)), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn ages_percentages_and_counts_read_well() {
        assert_eq!(age(0.42), "0.4 s");
        assert_eq!(age(61.0), "1 min 1 s");
        assert_eq!(age(90_000.0), "1 d 1 h");
        assert_eq!(age(f64::NAN), "-");
        assert_eq!(percent(0.001), "0.100 %");
        assert_eq!(count(0), "0");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
    }
}
