//! Reboot windows: when a node may take a slot, in the node's (or a named) time zone.
//!
//! A window opens at a wall-clock time on chosen days and stays open for a real duration
//! (`length`): a 2 h window that opens at 01:30 on the night clocks go forward still lasts 2 h.
//! A window may cross midnight; its day is the day it opens (`sat 22:00` + `4h` is open until
//! Sunday 02:00). A start time that does not exist that day (skipped by a DST change) opens at
//! the same offset after the gap (02:30 on a night that jumps from 02:00 to 03:00 opens at
//! 03:30); one that exists twice opens at the first (RFC 5545 / Temporal's "compatible"
//! disambiguation).
//!
//! Everything here is pure: each computation takes `now`.

use std::fmt;
use std::time::Duration;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// The longest window: a week (a longer one would always be open).
pub const MAX_LENGTH: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a window cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// The start is not `HH:MM` (24 h clock).
    #[error("start {0:?} is not HH:MM (00:00 to 23:59)")]
    Start(String),
    /// A day is not a weekday name.
    #[error("day {0:?} is not a weekday (mon, tue, … or monday, tuesday, …)")]
    Day(String),
    /// The length is zero or longer than a week.
    #[error("length {0:?} must be more than 0 and at most 7 days")]
    Length(Duration),
    /// The time zone is not in the time zone database.
    #[error("unknown time zone {name:?}: {reason}")]
    TimeZone {
        /// The name given.
        name: String,
        /// What the database said.
        reason: String,
    },
}

/// One recurring window: on `days`, from `start` (wall clock in `time_zone`) for `length`.
#[derive(Clone, PartialEq)]
pub struct Window {
    days: Vec<Weekday>,
    start: Time,
    length: Duration,
    time_zone: TimeZone,
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("days", &self.days)
            .field("start", &self.start)
            .field("length", &self.length)
            .field("time_zone", &self.time_zone.iana_name().unwrap_or("system"))
            .finish()
    }
}

/// Whether the windows are open at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowCheck {
    /// Open; it closes at `closes_at` (the latest close among the windows open now).
    Open {
        /// When it closes.
        closes_at: Timestamp,
    },
    /// Closed; the next window opens at `opens_at`.
    Closed {
        /// When the next one opens.
        opens_at: Timestamp,
    },
}

impl WindowCheck {
    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        matches!(self, WindowCheck::Open { .. })
    }
}

impl Window {
    /// A window on `days` (every day when empty) from `start` (`HH:MM`) for `length`, in
    /// `time_zone` (an IANA name such as `Europe/Berlin`; `None`: the system's).
    ///
    /// # Errors
    ///
    /// [`WindowError`] for a bad start, day, length or time zone.
    ///
    /// ```
    /// use std::time::Duration;
    /// use coord_reboot::agent::Window;
    ///
    /// let weekend_nights = Window::new(&["sat", "sun"], "22:00", Duration::from_secs(4 * 3600), Some("Europe/Berlin"));
    /// assert!(weekend_nights.is_ok());
    /// assert!(Window::new(&["someday"], "22:00", Duration::from_secs(60), None).is_err());
    /// assert!(Window::new::<&str>(&[], "25:00", Duration::from_secs(60), None).is_err());
    /// ```
    pub fn new<S: AsRef<str>>(
        days: &[S],
        start: &str,
        length: Duration,
        time_zone: Option<&str>,
    ) -> Result<Window, WindowError> {
        let days = if days.is_empty() {
            ALL_DAYS.to_vec()
        } else {
            days.iter()
                .map(|d| parse_day(d.as_ref()))
                .collect::<Result<Vec<_>, _>>()?
        };
        if length.is_zero() || length > MAX_LENGTH {
            return Err(WindowError::Length(length));
        }
        let time_zone = match time_zone {
            None => TimeZone::system(),
            Some(name) => TimeZone::get(name).map_err(|e| WindowError::TimeZone {
                name: name.to_owned(),
                reason: e.to_string(),
            })?,
        };
        Ok(Window {
            days,
            start: parse_start(start)?,
            length,
            time_zone,
        })
    }

    /// The instant this window opens on `date` (none when `date` is not one of its days).
    fn opening_on(&self, date: Date) -> Option<Timestamp> {
        if !self.days.contains(&date.weekday()) {
            return None;
        }
        let local = date.to_datetime(self.start);
        // compatible: a skipped time moves forward by the gap, a repeated one takes the first.
        self.time_zone
            .to_ambiguous_zoned(local)
            .compatible()
            .ok()
            .map(|zoned| zoned.timestamp())
    }

    fn length(&self) -> SignedDuration {
        SignedDuration::try_from(self.length).unwrap_or(SignedDuration::MAX)
    }

    /// Whether the window is open at `now`, and until or from when.
    ///
    /// ```
    /// use std::time::Duration;
    /// use coord_reboot::agent::{Window, WindowCheck};
    ///
    /// let nightly = Window::new::<&str>(&[], "22:00", Duration::from_secs(4 * 3600), Some("UTC")).unwrap();
    /// let now: jiff::Timestamp = "2025-06-02T01:00:00Z".parse().unwrap();
    /// assert_eq!(nightly.check(now), WindowCheck::Open { closes_at: "2025-06-02T02:00:00Z".parse().unwrap() });
    /// ```
    pub fn check(&self, now: Timestamp) -> WindowCheck {
        let today = now.to_zoned(self.time_zone.clone()).date();
        let length = self.length();
        let mut closes_at: Option<Timestamp> = None;
        let mut opens_at: Option<Timestamp> = None;
        // A window that opened up to 7 days ago may still be open; one opens within 8 days.
        for offset in -8..=8_i64 {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let Some(open) = self.opening_on(date) else {
                continue;
            };
            let close = open.checked_add(length).unwrap_or(Timestamp::MAX);
            if open <= now && now < close {
                closes_at = Some(closes_at.map_or(close, |c| c.max(close)));
            } else if open > now {
                opens_at = Some(opens_at.map_or(open, |o| o.min(open)));
            }
        }
        match (closes_at, opens_at) {
            (Some(closes_at), _) => WindowCheck::Open { closes_at },
            (None, Some(opens_at)) => WindowCheck::Closed { opens_at },
            // No day at all can only happen at the ends of time.
            (None, None) => WindowCheck::Closed {
                opens_at: Timestamp::MAX,
            },
        }
    }
}

/// When a node may take a slot: any of its windows, or always when it has none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    windows: Vec<Window>,
}

impl Schedule {
    /// Open whenever one of `windows` is; always open when there is none.
    pub fn new(windows: Vec<Window>) -> Schedule {
        Schedule { windows }
    }

    /// Always open.
    pub fn always() -> Schedule {
        Schedule::default()
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Whether a window is open at `now`: open until the latest close of those open now, or
    /// closed until the earliest next opening. Windows that overlap or touch are not merged: the
    /// close reported is that of the windows open at `now`.
    ///
    /// ```
    /// use coord_reboot::agent::Schedule;
    /// assert!(Schedule::always().check(jiff::Timestamp::now()).is_open());
    /// ```
    pub fn check(&self, now: Timestamp) -> WindowCheck {
        if self.windows.is_empty() {
            return WindowCheck::Open {
                closes_at: Timestamp::MAX,
            };
        }
        let checks = self.windows.iter().map(|w| w.check(now));
        let closes_at = checks
            .clone()
            .filter_map(|c| match c {
                WindowCheck::Open { closes_at } => Some(closes_at),
                WindowCheck::Closed { .. } => None,
            })
            .max();
        match closes_at {
            Some(closes_at) => WindowCheck::Open { closes_at },
            None => WindowCheck::Closed {
                opens_at: checks
                    .filter_map(|c| match c {
                        WindowCheck::Closed { opens_at } => Some(opens_at),
                        WindowCheck::Open { .. } => None,
                    })
                    .min()
                    .unwrap_or(Timestamp::MAX),
            },
        }
    }
}

const ALL_DAYS: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

fn parse_day(text: &str) -> Result<Weekday, WindowError> {
    let day = match text.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tues" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thurs" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return Err(WindowError::Day(text.to_owned())),
    };
    Ok(day)
}

fn parse_start(text: &str) -> Result<Time, WindowError> {
    let bad = || WindowError::Start(text.to_owned());
    let (hour, minute) = text.trim().split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !(1..=2).contains(&hour.len())
        || !hour.bytes().all(|b| b.is_ascii_digit())
        || !two_digits(minute)
    {
        return Err(bad());
    }
    let hour: i8 = hour.parse().map_err(|_| bad())?;
    let minute: i8 = minute.parse().map_err(|_| bad())?;
    Time::new(hour, minute, 0, 0).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const HOUR: u64 = 3600;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn window(days: &[&str], start: &str, hours: u64, tz: &str) -> Window {
        Window::new(days, start, Duration::from_secs(hours * HOUR), Some(tz)).unwrap()
    }

    fn open(closes: &str) -> WindowCheck {
        WindowCheck::Open {
            closes_at: at(closes),
        }
    }

    fn closed(opens: &str) -> WindowCheck {
        WindowCheck::Closed {
            opens_at: at(opens),
        }
    }

    #[test]
    fn a_daily_window_is_open_inside_and_closed_outside() {
        let w = window(&[], "02:00", 2, "UTC");
        assert_eq!(
            w.check(at("2025-06-02T01:59:59Z")),
            closed("2025-06-02T02:00:00Z")
        );
        assert_eq!(
            w.check(at("2025-06-02T02:00:00Z")),
            open("2025-06-02T04:00:00Z")
        );
        assert_eq!(
            w.check(at("2025-06-02T04:00:00Z")),
            closed("2025-06-03T02:00:00Z"),
            "the end is exclusive"
        );
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_opens() {
        // 2025-06-07 is a Saturday.
        let w = window(&["sat"], "22:00", 4, "UTC");
        assert_eq!(
            w.check(at("2025-06-08T01:00:00Z")),
            open("2025-06-08T02:00:00Z"),
            "Sunday 01:00 is inside Saturday's window"
        );
        assert_eq!(
            w.check(at("2025-06-08T22:30:00Z")),
            closed("2025-06-14T22:00:00Z"),
            "Sunday 22:30 is not a window"
        );
        assert_eq!(
            w.check(at("2025-06-07T21:00:00Z")),
            closed("2025-06-07T22:00:00Z")
        );
    }

    #[test]
    fn days_pick_the_next_opening() {
        // 2025-06-04 is a Wednesday.
        let w = window(&["mon", "friday"], "03:00", 1, "UTC");
        assert_eq!(
            w.check(at("2025-06-04T12:00:00Z")),
            closed("2025-06-06T03:00:00Z")
        );
        assert_eq!(
            w.check(at("2025-06-06T12:00:00Z")),
            closed("2025-06-09T03:00:00Z")
        );
    }

    #[test]
    fn the_time_zone_places_the_window() {
        let w = window(&[], "02:00", 1, "America/New_York");
        // 02:00 EDT is 06:00 UTC.
        assert_eq!(
            w.check(at("2025-06-02T06:30:00Z")),
            open("2025-06-02T07:00:00Z")
        );
        assert!(!w.check(at("2025-06-02T02:30:00Z")).is_open());
    }

    #[test]
    fn a_start_skipped_by_spring_forward_opens_after_the_gap_and_lasts_its_length() {
        // Europe/Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let w = window(&[], "02:30", 2, "Europe/Berlin");
        // 03:30 CEST = 01:30 UTC, open for 2 real hours.
        assert_eq!(
            w.check(at("2025-03-30T01:00:00Z")),
            closed("2025-03-30T01:30:00Z")
        );
        assert_eq!(
            w.check(at("2025-03-30T01:30:00Z")),
            open("2025-03-30T03:30:00Z")
        );
        // The day before, 02:30 CET = 01:30 UTC as well; the day after, 02:30 CEST = 00:30 UTC.
        assert_eq!(
            w.check(at("2025-03-31T00:00:00Z")),
            closed("2025-03-31T00:30:00Z")
        );
    }

    #[test]
    fn a_window_spanning_fall_back_lasts_its_real_length() {
        // Europe/Berlin, 2025-10-26: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let w = window(&[], "02:30", 1, "Europe/Berlin");
        // The first 02:30 (CEST) = 00:30 UTC.
        assert_eq!(
            w.check(at("2025-10-26T00:45:00Z")),
            open("2025-10-26T01:30:00Z")
        );
        // The second 02:30 (CET, 01:30 UTC) is not a second opening.
        assert!(!w.check(at("2025-10-26T01:45:00Z")).is_open());

        let overnight = window(&[], "01:00", 4, "Europe/Berlin");
        // 01:00 CEST = 23:00 UTC the day before; 4 real hours later is 03:00 UTC (04:00 CET).
        assert_eq!(
            overnight.check(at("2025-10-26T02:00:00Z")),
            open("2025-10-26T03:00:00Z")
        );
    }

    #[test]
    fn a_schedule_is_open_when_any_window_is_and_always_without_windows() {
        let schedule = Schedule::new(vec![
            window(&[], "02:00", 1, "UTC"),
            window(&[], "14:00", 1, "UTC"),
        ]);
        assert_eq!(
            schedule.check(at("2025-06-02T10:00:00Z")),
            closed("2025-06-02T14:00:00Z")
        );
        assert_eq!(
            schedule.check(at("2025-06-02T14:10:00Z")),
            open("2025-06-02T15:00:00Z")
        );
        assert!(
            Schedule::always()
                .check(at("2025-06-02T10:00:00Z"))
                .is_open()
        );
    }

    #[test]
    fn bad_windows_are_rejected() {
        let hour = Duration::from_secs(HOUR);
        for start in ["24:00", "2", "02:0", "02:60", "-1:00", "ab:cd", "02:00:00"] {
            assert!(
                matches!(
                    Window::new::<&str>(&[], start, hour, Some("UTC")),
                    Err(WindowError::Start(_))
                ),
                "{start}"
            );
        }
        assert!(Window::new::<&str>(&[], "2:05", hour, Some("UTC")).is_ok());
        assert!(matches!(
            Window::new(&["funday"], "02:00", hour, Some("UTC")),
            Err(WindowError::Day(_))
        ));
        assert!(matches!(
            Window::new::<&str>(&[], "02:00", Duration::ZERO, Some("UTC")),
            Err(WindowError::Length(_))
        ));
        assert!(matches!(
            Window::new::<&str>(&[], "02:00", MAX_LENGTH + hour, Some("UTC")),
            Err(WindowError::Length(_))
        ));
        assert!(matches!(
            Window::new::<&str>(&[], "02:00", hour, Some("Mars/Olympus_Mons")),
            Err(WindowError::TimeZone { .. })
        ));
    }
}
