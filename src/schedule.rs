//! Schedules as arithmetic: cron expressions (5 fields or `@daily`-style) in an IANA time
//! zone, the next fire times, and which fire times are due given the last one fired.
//!
//! Everything here takes the clock as an argument, so that the rules (catchup, daylight
//! saving, a first start) are tested without waiting. The service that reads the store,
//! fires runs and persists the last fire time is `server::scheduler`; this module neither
//! reads the store nor starts anything.
//!
//! Daylight saving follows Vixie cron (as `croner` does): a fire time that falls in the hour
//! skipped in spring fires at the first valid minute after the gap, and one that falls in the
//! hour repeated in autumn fires once.

use crate::spec::Pipeline;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// At most this many missed intervals are fired per pipeline and scheduler pass with
/// `catchup: true`; the rest follow on the next passes, oldest first.
pub const CATCHUP_BATCH: usize = 100;

/// Parses a cron expression, or says why it is not one.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    expr.parse::<croner::Cron>()
        .map_err(|e| format!("invalid cron expression `{expr}`: {e}; write 5 fields (`0 9 * * *`) or a name like `@daily`"))
}

/// The next `n` fire times after `after`, in the time zone of `after`.
pub fn next_fire_times<T: TimeZone>(
    cron: &croner::Cron,
    after: &DateTime<T>,
    n: usize,
) -> Vec<DateTime<T>> {
    cron.iter_after(after.clone()).take(n).collect()
}

/// Parses a run's logical date: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_logical_date(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = DateTime::parse_from_rfc3339(text) {
        return Ok(d.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| {
            let shown: String = text.chars().take(40).collect();
            format!("`{shown}` is not a date: use YYYY-MM-DD or RFC 3339")
        })
}

/// A pipeline's schedule, ready to compute with.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    pub expr: String,
    cron: croner::Cron,
    /// The time zone fire times are computed in.
    pub tz: Tz,
    /// Whether every missed interval is fired, or only the latest.
    pub catchup: bool,
    /// The first instant that may fire.
    pub start: Option<DateTime<Utc>>,
}

/// What the scheduler should do for one pipeline now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Fire times to start runs for, oldest first (their logical dates).
    pub fire: Vec<DateTime<Utc>>,
    /// The new "last fired" mark to persist with them. When nothing is due on a first sight
    /// it is `now`, so that a later restart does not treat the time before as missed.
    pub mark: DateTime<Utc>,
}

impl Schedule {
    /// The schedule of a pipeline, if it has one (`UTC` when no time zone is given).
    pub fn of(p: &Pipeline) -> Result<Option<Schedule>, String> {
        let Some(expr) = &p.schedule else {
            return Ok(None);
        };
        let tz: Tz = match &p.timezone {
            Some(name) => name
                .parse()
                .map_err(|_| format!("unknown time zone `{name}`"))?,
            None => Tz::UTC,
        };
        // A start in the hour skipped in spring begins at the end of the gap.
        let start = p.start_date.and_then(|naive| {
            (0..=4).find_map(|h| {
                tz.from_local_datetime(&(naive + chrono::Duration::minutes(30 * h)))
                    .earliest()
                    .map(|d| d.with_timezone(&Utc))
            })
        });
        Ok(Some(Schedule {
            expr: expr.clone(),
            cron: parse_cron(expr)?,
            tz,
            catchup: p.catchup,
            start,
        }))
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .iter_after(t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` fire times after `t`, in the schedule's time zone.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        let from = match self.start {
            Some(s) if s > t => s - chrono::Duration::milliseconds(1),
            _ => t,
        };
        next_fire_times(&self.cron, &from.with_timezone(&self.tz), n)
    }

    /// Which fire times are due at `now`, given the last fire time handled (`None`: this
    /// pipeline was never scheduled before).
    ///
    /// - Never scheduled and no `start_date`: nothing is due; the mark is `now`.
    /// - Otherwise every fire time after the last one (or from `start_date`) up to `now` is
    ///   missed; `catchup: true` fires them all (oldest first, [`CATCHUP_BATCH`] at a time),
    ///   `catchup: false` only the latest.
    pub fn due(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        let from = match (last, self.start) {
            (Some(l), Some(s)) => l.max(s - chrono::Duration::milliseconds(1)),
            (Some(l), None) => l,
            (None, Some(s)) => s - chrono::Duration::milliseconds(1),
            (None, None) => {
                return Due {
                    fire: vec![],
                    mark: now,
                }
            }
        };
        if from >= now {
            return Due {
                fire: vec![],
                mark: last.unwrap_or(now),
            };
        }
        let iter = self
            .cron
            .iter_after(from.with_timezone(&self.tz))
            .map(|d| d.with_timezone(&Utc))
            .take_while(|d| *d <= now);
        let fire: Vec<DateTime<Utc>> = if self.catchup {
            iter.take(CATCHUP_BATCH).collect()
        } else {
            iter.last().into_iter().collect()
        };
        let mark = fire.last().copied().unwrap_or(last.unwrap_or(from));
        Due { fire, mark }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(expr: &str, tz: &str, catchup: bool) -> Schedule {
        Schedule {
            expr: expr.into(),
            cron: parse_cron(expr).unwrap(),
            tz: tz.parse().unwrap(),
            catchup,
            start: None,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(s: &Schedule, d: &DateTime<Utc>) -> String {
        d.with_timezone(&s.tz).to_rfc3339()
    }

    #[test]
    fn accepts_five_fields_and_names() {
        assert!(parse_cron("0 9 * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert!(e.contains("invalid cron"), "{e}");
        let tz: chrono_tz::Tz = "America/Argentina/Buenos_Aires".parse().unwrap();
        let start = tz.with_ymd_and_hms(2024, 1, 1, 10, 0, 0).unwrap();
        let next = next_fire_times(&parse_cron("0 9 * * *").unwrap(), &start, 2);
        assert_eq!(next[0].to_rfc3339(), "2024-01-02T09:00:00-03:00");
    }

    #[test]
    fn first_sight_fires_nothing_and_marks_now() {
        let s = sched("*/5 * * * *", "UTC", true);
        let now = utc("2024-03-01T10:07:00Z");
        assert_eq!(
            s.due(None, now),
            Due {
                fire: vec![],
                mark: now
            }
        );
    }

    #[test]
    fn without_catchup_only_the_latest_missed_interval_fires() {
        let s = sched("0 * * * *", "UTC", false);
        let d = s.due(
            Some(utc("2024-03-01T06:00:00Z")),
            utc("2024-03-01T10:30:00Z"),
        );
        assert_eq!(d.fire, vec![utc("2024-03-01T10:00:00Z")]);
        assert_eq!(d.mark, utc("2024-03-01T10:00:00Z"));
        // Nothing more until the next hour; the mark stays.
        let again = s.due(Some(d.mark), utc("2024-03-01T10:59:59Z"));
        assert!(again.fire.is_empty());
        assert_eq!(again.mark, d.mark);
    }

    #[test]
    fn catchup_fires_every_missed_interval_oldest_first() {
        let s = sched("0 * * * *", "UTC", true);
        let d = s.due(
            Some(utc("2024-03-01T06:00:00Z")),
            utc("2024-03-01T10:30:00Z"),
        );
        let want: Vec<_> = ["07", "08", "09", "10"]
            .iter()
            .map(|h| utc(&format!("2024-03-01T{h}:00:00Z")))
            .collect();
        assert_eq!(d.fire, want);
        // A fire time exactly at `now` is due; the one handled last is not fired again.
        let d2 = s.due(Some(d.mark), utc("2024-03-01T11:00:00Z"));
        assert_eq!(d2.fire, vec![utc("2024-03-01T11:00:00Z")]);
    }

    #[test]
    fn catchup_is_batched() {
        let s = sched("* * * * *", "UTC", true);
        let d = s.due(
            Some(utc("2024-03-01T00:00:00Z")),
            utc("2024-03-02T00:00:00Z"),
        );
        assert_eq!(d.fire.len(), CATCHUP_BATCH);
        assert_eq!(d.mark, *d.fire.last().unwrap());
        assert_eq!(d.fire[0], utc("2024-03-01T00:01:00Z"));
    }

    #[test]
    fn start_date_backfills_from_its_first_interval() {
        let mut s = sched("0 9 * * *", "America/Argentina/Buenos_Aires", true);
        s.start = Some(utc("2024-01-01T12:00:00Z")); // 09:00 in Buenos Aires
        let d = s.due(None, utc("2024-01-03T13:00:00Z"));
        let shown: Vec<String> = d.fire.iter().map(|t| local(&s, t)).collect();
        assert_eq!(
            shown,
            [
                "2024-01-01T09:00:00-03:00",
                "2024-01-02T09:00:00-03:00",
                "2024-01-03T09:00:00-03:00"
            ]
        );
        s.catchup = false;
        assert_eq!(
            s.due(None, utc("2024-01-03T13:00:00Z")).fire,
            vec![utc("2024-01-03T12:00:00Z")]
        );
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_fires_once_right_after_it() {
        // 2024-03-10: New York skips from 02:00 to 03:00.
        let s = sched("30 2 * * *", "America/New_York", true);
        let d = s.due(
            Some(utc("2024-03-08T12:00:00Z")),
            utc("2024-03-12T12:00:00Z"),
        );
        let shown: Vec<String> = d.fire.iter().map(|t| local(&s, t)).collect();
        assert_eq!(
            shown,
            [
                "2024-03-09T02:30:00-05:00",
                "2024-03-10T03:00:00-04:00",
                "2024-03-11T02:30:00-04:00",
                "2024-03-12T02:30:00-04:00"
            ]
        );
    }

    #[test]
    fn a_daily_time_in_the_repeated_autumn_hour_fires_once() {
        // 2024-11-03: New York repeats 01:00-02:00.
        let s = sched("30 1 * * *", "America/New_York", true);
        let d = s.due(
            Some(utc("2024-11-02T12:00:00Z")),
            utc("2024-11-04T12:00:00Z"),
        );
        let shown: Vec<String> = d.fire.iter().map(|t| local(&s, t)).collect();
        assert_eq!(
            shown,
            ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]
        );
    }

    #[test]
    fn hourly_schedules_keep_real_hours_across_both_changes() {
        let s = sched("0 * * * *", "Europe/Madrid", true);
        // Spring 2024-03-31: 02:00 -> 03:00 local; 23 hours that day.
        let d = s.due(
            Some(utc("2024-03-30T23:00:00Z")),
            utc("2024-03-31T23:00:00Z"),
        );
        assert_eq!(d.fire.len(), 24, "one fire per real hour");
        // Autumn 2024-10-27: 03:00 -> 02:00 local; 25 hours that day.
        let d = s.due(
            Some(utc("2024-10-26T22:00:00Z")),
            utc("2024-10-27T23:00:00Z"),
        );
        let mut sorted = d.fire.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), d.fire.len(), "no instant twice");
        assert!(d.fire.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn argentina_twice_a_year() {
        // Seed 002: `0 0 1 1,7 *`, once on January 1st and July 1st.
        let s = sched("0 0 1 1,7 *", "America/Argentina/Buenos_Aires", false);
        let next: Vec<String> = s
            .upcoming(utc("2024-02-01T00:00:00Z"), 3)
            .iter()
            .map(|d| d.to_rfc3339())
            .collect();
        assert_eq!(
            next,
            [
                "2024-07-01T00:00:00-03:00",
                "2025-01-01T00:00:00-03:00",
                "2025-07-01T00:00:00-03:00"
            ]
        );
    }
}
