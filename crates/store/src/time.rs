//! UTC calendar time of a Unix timestamp, for names and listings (run ids, `ckpt ls`, lease
//! expiries): a thin wrapper over chrono that fixes the two layouts the project prints.
//!
//! chrono's calendar ends with the year 262142 (about 8.2e12 seconds); a timestamp past it
//! (a corrupt manifest or lease, never a clock) prints as its raw seconds, marked as such,
//! rather than as a made-up date.

use std::fmt;

use chrono::{DateTime, Datelike, Timelike};

/// A Unix time (whole seconds) shown as a proleptic-Gregorian UTC date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc(Repr);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repr {
    Calendar(DateTime<chrono::Utc>),
    /// Past the last second chrono can represent: the seconds since the epoch.
    BeyondCalendar(u64),
}

impl Utc {
    pub fn from_unix(secs: u64) -> Self {
        let calendar = i64::try_from(secs)
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0));
        Self(calendar.map_or(Repr::BeyondCalendar(secs), Repr::Calendar))
    }

    /// `YYYYMMDD-hhmmss`, for names (`unix-<secs>` past the calendar).
    pub fn compact(&self) -> String {
        match self.0 {
            Repr::Calendar(t) => format!(
                "{:04}{:02}{:02}-{:02}{:02}{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Repr::BeyondCalendar(secs) => format!("unix-{secs}"),
        }
    }
}

/// `YYYY-MM-DD hh:mm:ss` (`unix time <secs>` past the calendar). Years past 9999 print all
/// their digits without chrono's `+` sign, as the hand-written formatter before it did.
impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Repr::Calendar(t) => write!(
                f,
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Repr::BeyondCalendar(secs) => write!(f, "unix time {secs}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last second chrono's calendar holds: 262142-12-31 23:59:59.
    const LAST_CALENDAR_SECOND: u64 = 8_210_266_876_799;

    #[test]
    fn known_dates() {
        assert_eq!(Utc::from_unix(0).compact(), "19700101-000000");
        assert_eq!(Utc::from_unix(951_782_400).compact(), "20000229-000000");
        assert_eq!(Utc::from_unix(1_732_350_245).compact(), "20241123-082405");
        assert_eq!(
            Utc::from_unix(1_732_350_245).to_string(),
            "2024-11-23 08:24:05"
        );
        // The end of 32-bit time_t, and the last second of a leap year.
        assert_eq!(
            Utc::from_unix(2_147_483_647).to_string(),
            "2038-01-19 03:14:07"
        );
        assert_eq!(
            Utc::from_unix(4_107_542_399).to_string(),
            "2100-02-28 23:59:59"
        );
    }

    /// Values the hand-written civil-from-days conversion printed, which chrono must match
    /// byte for byte, including five- and six-digit years.
    #[test]
    fn far_future_dates() {
        assert_eq!(
            Utc::from_unix(253_402_300_799).to_string(),
            "9999-12-31 23:59:59"
        );
        assert_eq!(
            Utc::from_unix(253_402_300_800).to_string(),
            "10000-01-01 00:00:00"
        );
        assert_eq!(
            Utc::from_unix(253_402_300_800).compact(),
            "100000101-000000"
        );
        assert_eq!(
            Utc::from_unix(LAST_CALENDAR_SECOND).to_string(),
            "262142-12-31 23:59:59"
        );
        assert_eq!(
            Utc::from_unix(LAST_CALENDAR_SECOND).compact(),
            "2621421231-235959"
        );
    }

    #[test]
    fn beyond_the_calendar_prints_the_seconds() {
        let first = LAST_CALENDAR_SECOND + 1;
        assert_eq!(Utc::from_unix(first).to_string(), "unix time 8210266876800");
        assert_eq!(Utc::from_unix(first).compact(), "unix-8210266876800");
        // Past i64 too (a lease's `expires_at_ms` of u64::MAX, divided by 1000 or not).
        assert_eq!(
            Utc::from_unix(u64::MAX).to_string(),
            "unix time 18446744073709551615"
        );
        assert_eq!(
            Utc::from_unix(u64::MAX / 1000).compact(),
            "unix-18446744073709551"
        );
    }
}
