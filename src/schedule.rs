//! Cron expressions: parsing (5 fields or `@daily`-style) and next fire times in a time zone.
//! The scheduler service that fires runs belongs to `cauce server` (a later part); this
//! module is what `cauce validate` and the listings use today.

use chrono::{DateTime, TimeZone};

/// Parses a cron expression, or says why it is not one.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    expr.parse::<croner::Cron>()
        .map_err(|e| format!("invalid cron expression `{expr}`: {e}; write 5 fields (`0 9 * * *`) or a name like `@daily`"))
}

/// The next `n` fire times after `after`, in the time zone of `after`.
pub fn next_fire_times<Tz: TimeZone>(
    cron: &croner::Cron,
    after: &DateTime<Tz>,
    n: usize,
) -> Vec<DateTime<Tz>> {
    cron.iter_after(after.clone()).take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
