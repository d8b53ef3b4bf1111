//! Output helpers matching rkt's: Go's `tabwriter.NewWriter(w, 0, 8, 1, '\t', 0)` column layout
//! and go-humanize's relative times.

use chrono::{DateTime, Utc};

/// Lays rows out like Go's tabwriter with tab padding: every column but the last is padded with
/// tabs to a common width (cell width + 1, rounded up to a multiple of 8).
pub fn tabulate(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate().take(r.len().saturating_sub(1)) {
            widths[i] = widths[i].max(c.chars().count() + 1);
        }
    }
    for w in &mut widths {
        *w = w.div_ceil(8) * 8;
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count();
                out.push_str(&"\t".repeat(pad.div_ceil(8)));
            }
        }
        out.push('\n');
    }
    out
}

/// go-humanize's `Time`: "now", "5 seconds ago", "1 minute ago", "3 days ago"...
pub fn humanize(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (ago, secs) = if secs < 0 {
        ("from now", -secs)
    } else {
        ("ago", secs)
    };
    const MIN: i64 = 60;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    const WEEK: i64 = 7 * DAY;
    const MONTH: i64 = 30 * DAY;
    const YEAR: i64 = 12 * MONTH;
    let unit = |n: i64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one} {ago}")
        } else {
            format!("{n} {many} {ago}")
        }
    };
    match secs {
        0 => "now".to_string(),
        s if s < MIN => unit(s, "second", "seconds"),
        s if s < 2 * MIN => format!("1 minute {ago}"),
        s if s < HOUR => unit(s / MIN, "minute", "minutes"),
        s if s < 2 * HOUR => format!("1 hour {ago}"),
        s if s < DAY => unit(s / HOUR, "hour", "hours"),
        s if s < 2 * DAY => format!("1 day {ago}"),
        s if s < WEEK => unit(s / DAY, "day", "days"),
        s if s < 2 * WEEK => format!("1 week {ago}"),
        s if s < MONTH => unit(s / WEEK, "week", "weeks"),
        s if s < 2 * MONTH => format!("1 month {ago}"),
        s if s < YEAR => unit(s / MONTH, "month", "months"),
        s if s < 2 * YEAR => format!("1 year {ago}"),
        s => unit(s / YEAR, "year", "years"),
    }
}

/// rkt's `defaultTimeLayout` ("2006-01-02 15:04:05.999 -0700 MST"), in UTC.
pub fn full_time(t: DateTime<Utc>) -> String {
    let ms = t.timestamp_subsec_millis();
    let frac = if ms == 0 {
        String::new()
    } else {
        format!(".{ms:03}").trim_end_matches('0').to_string()
    };
    format!("{}{} +0000 UTC", t.format("%Y-%m-%d %H:%M:%S"), frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabwriter_layout() {
        let rows = vec![
            vec!["UUID".into(), "APP".into(), "STATE".into()],
            vec![
                "1234abcd".into(),
                "busybox-long-name".into(),
                "exited".into(),
            ],
        ];
        assert_eq!(
            tabulate(&rows),
            "UUID\t\tAPP\t\t\tSTATE\n1234abcd\tbusybox-long-name\texited\n"
        );
    }

    #[test]
    fn humanized_times() {
        let now = Utc::now();
        let h = |s: i64| humanize(now - chrono::Duration::seconds(s), now);
        assert_eq!(h(0), "now");
        assert_eq!(h(1), "1 second ago");
        assert_eq!(h(5), "5 seconds ago");
        assert_eq!(h(90), "1 minute ago");
        assert_eq!(h(3 * 3600), "3 hours ago");
        assert_eq!(h(3 * 86400), "3 days ago");
    }

    #[test]
    fn full_time_layout() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T10:02:03.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(full_time(t), "2024-03-01 10:02:03.25 +0000 UTC");
    }
}
