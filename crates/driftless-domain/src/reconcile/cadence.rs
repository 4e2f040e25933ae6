//! UTC schedules of reconciliation runs, in plain arithmetic on unix milliseconds.

use super::ReconcileError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Milliseconds in a minute.
pub const MINUTE_MILLIS: u64 = 60_000;
/// Milliseconds in an hour.
pub const HOUR_MILLIS: u64 = 60 * MINUTE_MILLIS;
/// Milliseconds in a day (UTC has no daylight saving; leap seconds are not counted by unix
/// time).
pub const DAY_MILLIS: u64 = 24 * HOUR_MILLIS;
/// Milliseconds in a week.
pub const WEEK_MILLIS: u64 = 7 * DAY_MILLIS;

/// A day of the week, Monday first (Monday = 0 … Sunday = 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday (0).
    Monday,
    /// Tuesday (1).
    Tuesday,
    /// Wednesday (2).
    Wednesday,
    /// Thursday (3); 1970-01-01 was one.
    Thursday,
    /// Friday (4).
    Friday,
    /// Saturday (5).
    Saturday,
    /// Sunday (6).
    Sunday,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Self; 7] = [
        Self::Monday,
        Self::Tuesday,
        Self::Wednesday,
        Self::Thursday,
        Self::Friday,
        Self::Saturday,
        Self::Sunday,
    ];

    /// 0 for Monday … 6 for Sunday.
    #[must_use]
    pub const fn index(self) -> u8 {
        self as u8
    }

    /// The day with [`Self::index`] `index`, if it is below 7.
    #[must_use]
    pub const fn from_index(index: u8) -> Option<Self> {
        match index {
            0 => Some(Self::Monday),
            1 => Some(Self::Tuesday),
            2 => Some(Self::Wednesday),
            3 => Some(Self::Thursday),
            4 => Some(Self::Friday),
            5 => Some(Self::Saturday),
            6 => Some(Self::Sunday),
            _ => None,
        }
    }

    /// The three-letter lowercase name: `"mon"` … `"sun"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Monday => "mon",
            Self::Tuesday => "tue",
            Self::Wednesday => "wed",
            Self::Thursday => "thu",
            Self::Friday => "fri",
            Self::Saturday => "sat",
            Self::Sunday => "sun",
        }
    }

    /// The full English name: `"monday"` … `"sunday"`.
    #[must_use]
    pub const fn full_name(self) -> &'static str {
        match self {
            Self::Monday => "monday",
            Self::Tuesday => "tuesday",
            Self::Wednesday => "wednesday",
            Self::Thursday => "thursday",
            Self::Friday => "friday",
            Self::Saturday => "saturday",
            Self::Sunday => "sunday",
        }
    }

    /// The UTC weekday of the instant `millis` after the unix epoch.
    #[must_use]
    pub const fn of_millis(millis: u64) -> Self {
        // 1970-01-01 (day 0) was a Thursday, index 3.
        match Self::from_index(((millis / DAY_MILLIS + 3) % 7) as u8) {
            Some(day) => day,
            None => Self::Monday, // unreachable: the index is below 7
        }
    }

    /// Days from 1970-01-01 (a Thursday) to the first such weekday on or after it.
    const fn first_day_after_epoch(self) -> u64 {
        (self.index() as u64 + 4) % 7
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Weekday {
    type Err = ReconcileError;

    /// Reads a three-letter (`"sun"`) or full (`"sunday"`) name, ignoring ASCII case and
    /// surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|d| t.eq_ignore_ascii_case(d.as_str()) || t.eq_ignore_ascii_case(d.full_name()))
            .ok_or_else(|| ReconcileError::UnknownWeekday { input: s.to_owned() })
    }
}

/// A UTC schedule: daily at `HH:MM`, or weekly on a weekday at `HH:MM`.
///
/// Its *slots* are the instants it names, as unix milliseconds: `daily@03:17` has one slot
/// at 03:17:00.000 UTC every day. The fields are private so that every cadence holds a
/// valid time (hour below 24, minute below 60); build one with [`Self::daily`],
/// [`Self::weekly`] or by parsing its text form, `"daily@03:17"` or `"weekly@sun@04:30"`
/// (which is also how it is serialized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cadence {
    weekday: Option<Weekday>,
    hour: u8,
    minute: u8,
}

impl Cadence {
    /// The default cadence of sampled runs: daily at 03:17 UTC.
    pub const DEFAULT_SAMPLED: Self = Self { weekday: None, hour: 3, minute: 17 };
    /// The default cadence of full runs: weekly on Sunday at 04:30 UTC.
    pub const DEFAULT_FULL: Self = Self { weekday: Some(Weekday::Sunday), hour: 4, minute: 30 };

    /// Every day at `hour:minute` UTC.
    ///
    /// # Errors
    /// [`ReconcileError::HourOutOfRange`] when `hour >= 24`,
    /// [`ReconcileError::MinuteOutOfRange`] when `minute >= 60`.
    pub const fn daily(hour: u8, minute: u8) -> Result<Self, ReconcileError> {
        Self::checked(None, hour, minute)
    }

    /// Every `weekday` at `hour:minute` UTC.
    ///
    /// # Errors
    /// As [`Self::daily`].
    pub const fn weekly(weekday: Weekday, hour: u8, minute: u8) -> Result<Self, ReconcileError> {
        Self::checked(Some(weekday), hour, minute)
    }

    const fn checked(weekday: Option<Weekday>, hour: u8, minute: u8) -> Result<Self, ReconcileError> {
        if hour >= 24 {
            return Err(ReconcileError::HourOutOfRange { hour });
        }
        if minute >= 60 {
            return Err(ReconcileError::MinuteOutOfRange { minute });
        }
        Ok(Self { weekday, hour, minute })
    }

    /// The weekday of a weekly cadence, `None` for a daily one.
    #[must_use]
    pub const fn weekday(&self) -> Option<Weekday> {
        self.weekday
    }

    /// The hour (UTC, 0–23).
    #[must_use]
    pub const fn hour(&self) -> u8 {
        self.hour
    }

    /// The minute (0–59).
    #[must_use]
    pub const fn minute(&self) -> u8 {
        self.minute
    }

    /// The time between two slots: a day or a week.
    #[must_use]
    pub const fn period_millis(&self) -> u64 {
        if self.weekday.is_some() {
            WEEK_MILLIS
        } else {
            DAY_MILLIS
        }
    }

    /// The first slot at or after the epoch; every slot is `phase + k × period`.
    const fn phase_millis(&self) -> u64 {
        let time_of_day = self.hour as u64 * HOUR_MILLIS + self.minute as u64 * MINUTE_MILLIS;
        match self.weekday {
            None => time_of_day,
            Some(day) => day.first_day_after_epoch() * DAY_MILLIS + time_of_day,
        }
    }

    /// The first slot strictly after `t_millis` (a slot exactly at `t_millis` is not
    /// returned). Saturates at `u64::MAX` some 584 million years from now.
    #[must_use]
    pub const fn next_after(&self, t_millis: u64) -> u64 {
        match self.latest_at_or_before(t_millis) {
            None => self.phase_millis(),
            Some(latest) => latest.saturating_add(self.period_millis()),
        }
    }

    /// The most recent slot at or before `t_millis` (`t_millis` itself if it is a slot),
    /// or `None` when `t_millis` is before the first slot after the epoch.
    #[must_use]
    pub const fn latest_at_or_before(&self, t_millis: u64) -> Option<u64> {
        let Some(since_first) = t_millis.checked_sub(self.phase_millis()) else {
            return None;
        };
        Some(t_millis - since_first % self.period_millis())
    }

    /// [`due_slot`] for this cadence.
    #[must_use]
    pub const fn due_slot(&self, now_millis: u64, last_run_slot: Option<u64>) -> Option<u64> {
        let Some(latest) = self.latest_at_or_before(now_millis) else {
            return None;
        };
        match last_run_slot {
            Some(last) if latest <= last => None,
            _ => Some(latest),
        }
    }
}

/// The slot of `cadence` to run now, if any: the latest slot at or before `now_millis`,
/// when it is strictly after `last_run_slot`.
///
/// After running, store the *returned slot* (not the current time) as the new
/// `last_run_slot`. Then:
///
/// * slots missed while the machine slept run **once** on waking (only the latest of them
///   is returned, and once it is stored the earlier ones are behind the marker);
/// * no slot runs twice, and when the clock jumps backwards no slot at or before
///   `last_run_slot` is run again — the next run is the first slot after the marker;
/// * when the clock jumps forwards, the latest slot passed runs once.
///
/// **A fresh install** has no slot run yet. Two choices:
///
/// * store [`initial_marker`]`(now)` — the install time — as `last_run_slot`: nothing is due
///   until the first slot after the install (recommended: no run fires during first
///   start-up);
/// * pass `None`: the latest slot at or before now (if there is one) is due at once.
#[must_use]
pub const fn due_slot(cadence: &Cadence, now_millis: u64, last_run_slot: Option<u64>) -> Option<u64> {
    cadence.due_slot(now_millis, last_run_slot)
}

/// The `last_run_slot` marker to store at install time, so that [`due_slot`] fires first at
/// the first slot strictly after `now_millis`. It is `now_millis` itself (a marker need not
/// be a slot).
#[must_use]
pub const fn initial_marker(now_millis: u64) -> u64 {
    now_millis
}

impl Default for Cadence {
    /// [`Cadence::DEFAULT_SAMPLED`].
    fn default() -> Self {
        Self::DEFAULT_SAMPLED
    }
}

impl fmt::Display for Cadence {
    /// `"daily@03:17"` or `"weekly@sun@04:30"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weekday {
            None => write!(f, "daily@{:02}:{:02}", self.hour, self.minute),
            Some(day) => write!(f, "weekly@{day}@{:02}:{:02}", self.hour, self.minute),
        }
    }
}

impl FromStr for Cadence {
    type Err = ReconcileError;

    /// Reads `"daily@HH:MM"` or `"weekly@DAY@HH:MM"` (UTC). `DAY` is a three-letter or full
    /// English weekday name; the hour has one or two digits, the minute two. ASCII case
    /// and surrounding whitespace are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = |problem| ReconcileError::MalformedCadence { input: s.to_owned(), problem };
        let mut parts = s.trim().split('@');
        let kind = parts.next().unwrap_or_default();
        let (weekday, time) = if kind.eq_ignore_ascii_case("daily") {
            (None, parts.next().ok_or_else(|| malformed("a daily cadence needs a time, as in daily@03:17"))?)
        } else if kind.eq_ignore_ascii_case("weekly") {
            let day = parts.next().ok_or_else(|| malformed("a weekly cadence needs a day and a time"))?;
            let time = parts
                .next()
                .ok_or_else(|| malformed("a weekly cadence needs a time, as in weekly@sun@04:30"))?;
            (Some(day.parse::<Weekday>()?), time)
        } else {
            return Err(malformed("it must start with daily@ or weekly@"));
        };
        if parts.next().is_some() {
            return Err(malformed("it has too many @-separated parts"));
        }
        let (hour, minute) = time.split_once(':').ok_or_else(|| malformed("the time must be HH:MM"))?;
        let hour =
            parse_digits(hour, 1..=2).ok_or_else(|| malformed("the hour must be one or two digits"))?;
        let minute = parse_digits(minute, 2..=2).ok_or_else(|| malformed("the minute must be two digits"))?;
        Self::checked(weekday, hour, minute)
    }
}

/// An unsigned number of `len` ASCII digits (no sign, no spaces); at most two digits fit.
fn parse_digits(text: &str, len: std::ops::RangeInclusive<usize>) -> Option<u8> {
    if !len.contains(&text.len()) || *len.end() > 2 {
        return None;
    }
    text.bytes().try_fold(0u8, |acc, b| b.is_ascii_digit().then(|| acc * 10 + (b - b'0')))
}

impl TryFrom<String> for Cadence {
    type Error = ReconcileError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Cadence> for String {
    fn from(cadence: Cadence) -> Self {
        cadence.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Days from 1970-01-01 to the civil date (proleptic Gregorian), after H. Hinnant.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Unix milliseconds of `y-m-d h:min:s.ms` UTC.
    fn at(y: i64, m: i64, d: i64, h: u64, min: u64, s: u64, ms: u64) -> u64 {
        let days = u64::try_from(days_from_civil(y, m, d)).unwrap_or(0);
        days * DAY_MILLIS + h * HOUR_MILLIS + min * MINUTE_MILLIS + s * 1_000 + ms
    }

    fn hm(y: i64, m: i64, d: i64, h: u64, min: u64) -> u64 {
        at(y, m, d, h, min, 0, 0)
    }

    const SAMPLED: Cadence = Cadence::DEFAULT_SAMPLED;
    const FULL: Cadence = Cadence::DEFAULT_FULL;

    #[test]
    fn the_calendar_helper_agrees_with_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(hm(2024, 1, 1, 0, 0), 1_704_067_200_000);
        assert_eq!(hm(2000, 3, 1, 0, 0), 951_868_800_000);
        assert_eq!(Weekday::of_millis(0), Weekday::Thursday);
        assert_eq!(Weekday::of_millis(hm(2024, 1, 1, 12, 0)), Weekday::Monday);
        assert_eq!(Weekday::of_millis(hm(2024, 1, 7, 23, 59)), Weekday::Sunday);
        assert_eq!(Weekday::of_millis(hm(2024, 2, 29, 0, 0)), Weekday::Thursday);
        assert_eq!(Weekday::of_millis(hm(2023, 12, 31, 4, 30)), Weekday::Sunday);
    }

    #[test]
    fn next_after_is_strictly_after() -> Result<(), ReconcileError> {
        let daily_midnight = Cadence::daily(0, 0)?;
        let weekly_monday = Cadence::weekly(Weekday::Monday, 0, 0)?;
        // (cadence, t, expected next slot)
        let cases = [
            // daily 03:17
            (SAMPLED, at(2024, 1, 1, 3, 16, 59, 999), hm(2024, 1, 1, 3, 17)),
            (SAMPLED, hm(2024, 1, 1, 3, 17), hm(2024, 1, 2, 3, 17)),
            (SAMPLED, at(2024, 1, 1, 3, 17, 0, 1), hm(2024, 1, 2, 3, 17)),
            (SAMPLED, at(2024, 1, 1, 23, 59, 59, 999), hm(2024, 1, 2, 3, 17)),
            (SAMPLED, hm(2024, 2, 28, 12, 0), hm(2024, 2, 29, 3, 17)),
            (SAMPLED, hm(2023, 12, 31, 4, 0), hm(2024, 1, 1, 3, 17)),
            (SAMPLED, 0, hm(1970, 1, 1, 3, 17)),
            // around midnight
            (daily_midnight, at(2023, 12, 31, 23, 59, 59, 999), hm(2024, 1, 1, 0, 0)),
            (daily_midnight, hm(2024, 1, 1, 0, 0), hm(2024, 1, 2, 0, 0)),
            (daily_midnight, 0, DAY_MILLIS),
            // weekly Sunday 04:30 (2024-01-07 and 2024-01-14 are Sundays)
            (FULL, at(2024, 1, 7, 4, 29, 59, 999), hm(2024, 1, 7, 4, 30)),
            (FULL, hm(2024, 1, 7, 4, 30), hm(2024, 1, 14, 4, 30)),
            (FULL, at(2024, 1, 7, 4, 30, 0, 1), hm(2024, 1, 14, 4, 30)),
            (FULL, hm(2024, 1, 6, 23, 0), hm(2024, 1, 7, 4, 30)),
            (FULL, hm(2024, 1, 8, 0, 0), hm(2024, 1, 14, 4, 30)),
            (FULL, hm(2023, 12, 31, 5, 0), hm(2024, 1, 7, 4, 30)),
            (FULL, 0, hm(1970, 1, 4, 4, 30)),
            // across a week boundary
            (weekly_monday, at(2024, 1, 7, 23, 59, 59, 999), hm(2024, 1, 8, 0, 0)),
            (weekly_monday, hm(2024, 1, 8, 0, 0), hm(2024, 1, 15, 0, 0)),
            (weekly_monday, 0, hm(1970, 1, 5, 0, 0)),
        ];
        for (i, (cadence, t, expected)) in cases.into_iter().enumerate() {
            assert_eq!(cadence.next_after(t), expected, "case {i}: {cadence} after {t}");
        }
        Ok(())
    }

    #[test]
    fn latest_at_or_before_includes_the_instant_itself() {
        let cases = [
            (SAMPLED, 0, None),
            (SAMPLED, at(1970, 1, 1, 3, 16, 59, 999), None),
            (SAMPLED, hm(1970, 1, 1, 3, 17), Some(hm(1970, 1, 1, 3, 17))),
            (SAMPLED, hm(2024, 1, 1, 3, 17), Some(hm(2024, 1, 1, 3, 17))),
            (SAMPLED, at(2024, 1, 1, 3, 16, 59, 999), Some(hm(2023, 12, 31, 3, 17))),
            (SAMPLED, hm(2024, 1, 1, 23, 59), Some(hm(2024, 1, 1, 3, 17))),
            (FULL, hm(1970, 1, 4, 4, 29), None),
            (FULL, hm(2024, 1, 7, 4, 30), Some(hm(2024, 1, 7, 4, 30))),
            (FULL, hm(2024, 1, 7, 4, 29), Some(hm(2023, 12, 31, 4, 30))),
            (FULL, hm(2024, 1, 13, 23, 59), Some(hm(2024, 1, 7, 4, 30))),
        ];
        for (i, (cadence, t, expected)) in cases.into_iter().enumerate() {
            assert_eq!(cadence.latest_at_or_before(t), expected, "case {i}: {cadence} at {t}");
        }
    }

    #[test]
    fn weekly_slots_fall_on_their_weekday() -> Result<(), ReconcileError> {
        let t = hm(2024, 5, 17, 13, 45);
        for day in Weekday::ALL {
            let c = Cadence::weekly(day, 22, 5)?;
            let next = c.next_after(t);
            assert_eq!(Weekday::of_millis(next), day);
            assert_eq!(next % DAY_MILLIS, 22 * HOUR_MILLIS + 5 * MINUTE_MILLIS);
            assert!(next > t && next - t <= WEEK_MILLIS);
            let latest = c.latest_at_or_before(t);
            assert_eq!(latest.map(Weekday::of_millis), Some(day));
            assert_eq!(latest, Some(next - WEEK_MILLIS));
            assert_eq!(Weekday::from_index(day.index()), Some(day));
        }
        assert_eq!(Weekday::from_index(7), None);
        Ok(())
    }

    #[test]
    fn extreme_instants_do_not_overflow() {
        let near_end = u64::MAX - 1;
        assert!(SAMPLED.latest_at_or_before(u64::MAX).is_some_and(|l| u64::MAX - l < DAY_MILLIS));
        assert_eq!(SAMPLED.next_after(u64::MAX), u64::MAX);
        assert!(FULL.next_after(near_end) >= near_end);
    }

    #[test]
    fn a_slot_is_due_once_at_or_after_its_time() {
        let slot = hm(2024, 1, 2, 3, 17);
        let last = Some(hm(2024, 1, 1, 3, 17));
        // (now, last run slot, due)
        let cases = [
            (at(2024, 1, 2, 3, 16, 59, 999), last, None),
            (slot, last, Some(slot)),
            (hm(2024, 1, 2, 9, 0), last, Some(slot)),
            (hm(2024, 1, 2, 9, 0), Some(slot), None),
            (hm(2024, 1, 3, 3, 16), Some(slot), None),
            // asleep three days: one run, for the latest slot
            (hm(2024, 1, 5, 10, 0), last, Some(hm(2024, 1, 5, 3, 17))),
            // never run, no marker: the latest past slot is due at once
            (hm(2024, 1, 2, 9, 0), None, Some(slot)),
            (0, None, None),
            // the clock went back before the last run: nothing is re-run
            (hm(2023, 12, 30, 12, 0), last, None),
            (hm(2024, 1, 1, 3, 17), last, None),
        ];
        for (i, (now, last, due)) in cases.into_iter().enumerate() {
            assert_eq!(due_slot(&SAMPLED, now, last), due, "case {i}: now {now}, last {last:?}");
        }
    }

    /// Ticks a scheduler loop over `now` readings, running (and recording) every due slot.
    fn run_loop(
        cadence: &Cadence,
        readings: impl IntoIterator<Item = u64>,
        mut last: Option<u64>,
    ) -> Vec<u64> {
        let mut ran = Vec::new();
        for now in readings {
            if let Some(slot) = due_slot(cadence, now, last) {
                ran.push(slot);
                last = Some(slot);
            }
        }
        ran
    }

    #[test]
    fn a_machine_asleep_for_three_days_runs_once_on_waking() {
        let start = hm(2024, 1, 1, 0, 0);
        let wake = hm(2024, 1, 4, 20, 0);
        let awake_before = (0..6 * 60).map(|m| start + m * MINUTE_MILLIS);
        let awake_after = (0..2 * 24 * 60).map(|m| wake + m * MINUTE_MILLIS);
        let ran = run_loop(&SAMPLED, awake_before.chain(awake_after), Some(initial_marker(start)));
        assert_eq!(
            ran,
            vec![
                hm(2024, 1, 1, 3, 17),
                hm(2024, 1, 4, 3, 17), // the 2nd, 3rd and 4th missed; the 4th runs on waking
                hm(2024, 1, 5, 3, 17),
                hm(2024, 1, 6, 3, 17),
            ]
        );
    }

    #[test]
    fn a_clock_jumping_backwards_re_runs_nothing() {
        let day = |d: i64, h: u64| hm(2024, 1, d, h, 0);
        // Runs on the 2nd and 3rd, then the clock is set back two days and walks forward.
        let readings =
            [day(1, 12), day(2, 12), day(3, 12), day(1, 13), day(2, 13), day(3, 13), day(3, 14), day(4, 12)];
        let ran = run_loop(&SAMPLED, readings, Some(initial_marker(day(1, 12))));
        assert_eq!(ran, vec![hm(2024, 1, 2, 3, 17), hm(2024, 1, 3, 3, 17), hm(2024, 1, 4, 3, 17)]);
    }

    #[test]
    fn a_clock_jumping_forwards_runs_the_latest_slot_once() {
        let start = hm(2024, 1, 1, 12, 0);
        let readings = [start, hm(2024, 3, 1, 2, 0), hm(2024, 3, 1, 2, 1), hm(2024, 3, 1, 5, 0)];
        assert_eq!(
            run_loop(&FULL, readings, Some(initial_marker(start))),
            vec![hm(2024, 2, 25, 4, 30)] // the last Sunday before 2024-03-01 (a Friday)
        );
        assert_eq!(Weekday::of_millis(hm(2024, 2, 25, 0, 0)), Weekday::Sunday);
    }

    #[test]
    fn a_fresh_install_waits_for_the_first_slot_after_it() {
        let install = hm(2024, 1, 3, 10, 0); // a Wednesday, after that day's 03:17
        let marker = initial_marker(install);
        assert_eq!(due_slot(&SAMPLED, install, Some(marker)), None);
        assert_eq!(due_slot(&SAMPLED, hm(2024, 1, 4, 3, 16), Some(marker)), None);
        assert_eq!(due_slot(&SAMPLED, hm(2024, 1, 4, 3, 17), Some(marker)), Some(hm(2024, 1, 4, 3, 17)));
        assert_eq!(due_slot(&FULL, hm(2024, 1, 7, 4, 29), Some(marker)), None);
        assert_eq!(due_slot(&FULL, hm(2024, 1, 7, 4, 30), Some(marker)), Some(hm(2024, 1, 7, 4, 30)));
        // Installed exactly at a slot: that slot is not run, the next one is.
        let marker = initial_marker(hm(2024, 1, 7, 4, 30));
        assert_eq!(due_slot(&FULL, hm(2024, 1, 10, 0, 0), Some(marker)), None);
        assert_eq!(due_slot(&FULL, hm(2024, 1, 14, 4, 30), Some(marker)), Some(hm(2024, 1, 14, 4, 30)));
    }

    #[test]
    fn every_minute_for_a_week_runs_each_slot_exactly_once() {
        let start = hm(2024, 1, 1, 0, 0);
        let week = (0..=7 * 24 * 60).map(|m| start + m * MINUTE_MILLIS);
        let daily = run_loop(&SAMPLED, week.clone(), Some(initial_marker(start)));
        assert_eq!(daily, (1..=7).map(|d| hm(2024, 1, d, 3, 17)).collect::<Vec<_>>());
        let weekly = run_loop(&FULL, week, Some(initial_marker(start)));
        assert_eq!(weekly, vec![hm(2024, 1, 7, 4, 30)]);
    }

    #[test]
    fn cadences_read_and_print_their_text_form() -> Result<(), ReconcileError> {
        // (text, canonical text)
        let cases = [
            ("daily@03:17", "daily@03:17"),
            ("daily@00:00", "daily@00:00"),
            ("daily@23:59", "daily@23:59"),
            ("daily@3:17", "daily@03:17"),
            ("DAILY@03:17", "daily@03:17"),
            ("  daily@03:17\n", "daily@03:17"),
            ("weekly@sun@04:30", "weekly@sun@04:30"),
            ("weekly@Sunday@4:30", "weekly@sun@04:30"),
            ("Weekly@MON@00:00", "weekly@mon@00:00"),
            ("weekly@wed@12:05", "weekly@wed@12:05"),
        ];
        for (text, canonical) in cases {
            let cadence: Cadence = text.parse()?;
            assert_eq!(cadence.to_string(), canonical, "{text:?}");
            assert_eq!(canonical.parse::<Cadence>()?, cadence);
        }
        assert_eq!("daily@03:17".parse::<Cadence>()?, Cadence::DEFAULT_SAMPLED);
        assert_eq!("weekly@sun@04:30".parse::<Cadence>()?, Cadence::DEFAULT_FULL);
        assert_eq!(Cadence::default(), Cadence::DEFAULT_SAMPLED);
        let c = Cadence::weekly(Weekday::Friday, 9, 8)?;
        assert_eq!((c.weekday(), c.hour(), c.minute()), (Some(Weekday::Friday), 9, 8));
        assert_eq!(c.period_millis(), WEEK_MILLIS);
        assert_eq!(SAMPLED.period_millis(), DAY_MILLIS);
        Ok(())
    }

    #[test]
    fn bad_cadences_are_named_errors() {
        let malformed = |text: &str| matches!(text.parse::<Cadence>(), Err(ReconcileError::MalformedCadence { input, .. }) if input == text);
        for text in [
            "",
            "daily",
            "daily@",
            "daily@0317",
            "daily@03:7",
            "daily@03:177",
            "daily@003:17",
            "daily@+3:17",
            "daily@-1:17",
            "daily@03 :17",
            "daily@03:17@sun",
            "daily@:17",
            "weekly@04:30",
            "weekly@sun",
            "weekly@sun@04:30@x",
            "monthly@01@04:30",
            "daily 03:17",
            "03:17",
        ] {
            assert!(malformed(text), "{text:?} gave {:?}", text.parse::<Cadence>());
        }
        assert_eq!("daily@24:00".parse::<Cadence>(), Err(ReconcileError::HourOutOfRange { hour: 24 }));
        assert_eq!("daily@99:00".parse::<Cadence>(), Err(ReconcileError::HourOutOfRange { hour: 99 }));
        assert_eq!("daily@23:60".parse::<Cadence>(), Err(ReconcileError::MinuteOutOfRange { minute: 60 }));
        assert_eq!(
            "weekly@funday@04:30".parse::<Cadence>(),
            Err(ReconcileError::UnknownWeekday { input: "funday".into() })
        );
        assert_eq!(Cadence::daily(24, 0), Err(ReconcileError::HourOutOfRange { hour: 24 }));
        assert_eq!(
            Cadence::weekly(Weekday::Sunday, 4, 60),
            Err(ReconcileError::MinuteOutOfRange { minute: 60 })
        );
        assert!(Cadence::daily(23, 59).is_ok());
    }

    #[test]
    fn weekdays_read_short_and_full_names() -> Result<(), ReconcileError> {
        for day in Weekday::ALL {
            assert_eq!(day.as_str().parse::<Weekday>()?, day);
            assert_eq!(day.full_name().to_uppercase().parse::<Weekday>()?, day);
            assert_eq!(day.to_string(), day.as_str());
        }
        assert!("su".parse::<Weekday>().is_err());
        assert!("".parse::<Weekday>().is_err());
        Ok(())
    }

    #[test]
    fn cadences_are_stored_as_their_text_and_checked_when_read() -> Result<(), crate::codec::CodecError> {
        for c in [SAMPLED, FULL] {
            let bytes = crate::codec::encode(&c)?;
            assert_eq!(crate::codec::decode::<Cadence>(&bytes)?, c);
            assert_eq!(crate::codec::decode::<String>(&bytes)?, c.to_string());
        }
        let forged = crate::codec::encode("daily@25:00")?;
        assert!(crate::codec::decode::<Cadence>(&forged).is_err());
        Ok(())
    }

    fn any_cadence() -> impl Strategy<Value = Cadence> {
        (proptest::option::of(0u8..7), 0u8..24, 0u8..60).prop_map(|(day, hour, minute)| Cadence {
            weekday: day.and_then(Weekday::from_index),
            hour,
            minute,
        })
    }

    proptest! {
        #[test]
        fn slots_bracket_every_instant(c in any_cadence(), t in 0u64..(u64::MAX / 2)) {
            let next = c.next_after(t);
            prop_assert!(next > t);
            prop_assert_eq!(c.latest_at_or_before(next), Some(next));
            prop_assert_eq!(c.next_after(next), next + c.period_millis());
            prop_assert_eq!(next % DAY_MILLIS, u64::from(c.hour()) * HOUR_MILLIS + u64::from(c.minute()) * MINUTE_MILLIS);
            if let Some(day) = c.weekday() {
                prop_assert_eq!(Weekday::of_millis(next), day);
            }
            match c.latest_at_or_before(t) {
                Some(latest) => {
                    prop_assert!(latest <= t);
                    prop_assert_eq!(next - latest, c.period_millis());
                }
                None => prop_assert!(next <= c.period_millis()),
            }
        }

        #[test]
        fn due_slots_are_never_repeated(c in any_cadence(), mut readings in proptest::collection::vec(0u64..(60 * DAY_MILLIS), 1..40)) {
            readings.sort_unstable();
            let ran = run_loop(&c, readings.iter().copied(), None);
            prop_assert!(ran.windows(2).all(|w| matches!(w, [a, b] if a < b)));
            for slot in &ran {
                prop_assert_eq!(c.latest_at_or_before(*slot), Some(*slot));
            }
        }

        #[test]
        fn text_form_round_trips(c in any_cadence()) {
            prop_assert_eq!(c.to_string().parse::<Cadence>(), Ok(c));
        }
    }
}
