//! PostgreSQL timestamps (microseconds since 2000-01-01 UTC) as calendar dates, without a date
//! library: budgets count calendar months, and the rule-based answerer writes RFC 3339 times.

/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The UTC month of a timestamp as year * 12 + month - 1.
pub fn month_index(pg_micros: i64) -> i32 {
    let (year, month, _) = civil_from_days(pg_micros.div_euclid(86_400_000_000) + PG_EPOCH_DAYS);
    (year * 12 + month - 1) as i32
}

/// The timestamp as RFC 3339 in UTC, to the second: `2026-12-02T10:00:00Z`.
pub fn rfc3339(pg_micros: i64) -> String {
    let seconds = pg_micros.div_euclid(1_000_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400) + PG_EPOCH_DAYS);
    let s = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microseconds since 2000-01-01 of a Unix time in seconds.
    fn pg(unix: i64) -> i64 {
        (unix - 946_684_800) * 1_000_000
    }

    #[test]
    fn calendar_dates_in_utc() {
        assert_eq!(rfc3339(0), "2000-01-01T00:00:00Z");
        assert_eq!(rfc3339(pg(1_796_213_045)), "2026-12-02T12:04:05Z");
        assert_eq!(rfc3339(pg(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1999-12-31T23:59:59Z");
        assert_eq!(month_index(pg(1_798_761_600)), 2027 * 12);
        assert_eq!(month_index(pg(1_798_761_599)), 2026 * 12 + 11);
    }
}
