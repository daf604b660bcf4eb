//! `strftime` for the templates' `strftime_now(fmt)` (HF passes
//! `datetime.now().strftime(fmt)`), formatting a Unix time in UTC.
//!
//! Follows the C/POSIX `strftime` conversions in the "C" locale, plus the glibc
//! padding flags `-` (no padding), `_` (spaces) and `0` (zeros) that templates
//! use, e.g. `%-d`. Unknown conversions are copied through unchanged, as glibc
//! does. Civil dates use the proleptic Gregorian calendar (days-from-epoch to
//! year/month/day by the era arithmetic of H. Hinnant's `chrono`-compatible
//! date algorithms). No time zone database: the time is always UTC.

use std::fmt::Write as _;

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday .. 6 = Saturday
    pub weekday: u32,
    /// 0-based day of the year (0..=365)
    pub yday: u32,
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days from 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl CivilTime {
    /// Breaks a Unix time (seconds since 1970-01-01T00:00:00Z) into UTC fields.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let leap_shift = u32::from(month > 2 && is_leap(year));
        Self {
            year,
            month,
            day,
            hour: tod / 3600,
            minute: tod / 60 % 60,
            second: tod % 60,
            weekday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
            yday: CUMULATIVE[(month - 1) as usize] + day - 1 + leap_shift,
        }
    }

    /// ISO 8601 week-based year and week number (1..=53).
    fn iso_week(&self) -> (i64, u32) {
        fn weeks_in(year: i64) -> i64 {
            let p = |y: i64| {
                (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7)
            };
            if p(year) == 4 || p(year - 1) == 3 {
                53
            } else {
                52
            }
        }
        let iso_wday = i64::from((self.weekday + 6) % 7 + 1); // Monday = 1
        let week = (i64::from(self.yday) + 1 - iso_wday + 10) / 7;
        if week < 1 {
            (self.year - 1, weeks_in(self.year - 1) as u32)
        } else if week > weeks_in(self.year) {
            (self.year + 1, 1)
        } else {
            (self.year, week as u32)
        }
    }
}

/// Padding requested by a glibc flag character.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pad {
    Default,
    None,
    Space,
    Zero,
}

fn push_num(out: &mut String, value: i64, width: usize, default_pad: char, pad: Pad) {
    let fill = match pad {
        Pad::None => {
            let _ = write!(out, "{value}");
            return;
        }
        Pad::Space => ' ',
        Pad::Zero => '0',
        Pad::Default => default_pad,
    };
    let text = value.to_string();
    for _ in text.len()..width {
        out.push(fill);
    }
    out.push_str(&text);
}

/// Formats `unix_secs` (UTC) with a `strftime` format string.
pub fn format(fmt: &str, unix_secs: i64) -> String {
    let t = CivilTime::from_unix(unix_secs);
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let pad = match chars.peek() {
            Some('-') => Pad::None,
            Some('_') => Pad::Space,
            Some('0') => Pad::Zero,
            _ => Pad::Default,
        };
        if pad != Pad::Default {
            chars.next();
        }
        let Some(conv) = chars.next() else {
            out.push('%');
            break;
        };
        if !push_conversion(&mut out, &t, unix_secs, conv, pad) {
            out.push('%');
            match pad {
                Pad::None => out.push('-'),
                Pad::Space => out.push('_'),
                Pad::Zero => out.push('0'),
                Pad::Default => {}
            }
            out.push(conv);
        }
    }
    out
}

/// Appends one conversion; false when `conv` is not a known conversion.
fn push_conversion(out: &mut String, t: &CivilTime, unix_secs: i64, conv: char, pad: Pad) -> bool {
    let hour12 = match t.hour % 12 {
        0 => 12,
        h => h,
    };
    let weekday = WEEKDAYS[t.weekday as usize];
    let month = MONTHS[(t.month - 1) as usize];
    match conv {
        'a' => out.push_str(&weekday[..3]),
        'A' => out.push_str(weekday),
        'b' | 'h' => out.push_str(&month[..3]),
        'B' => out.push_str(month),
        'C' => push_num(out, t.year.div_euclid(100), 2, '0', pad),
        'd' => push_num(out, i64::from(t.day), 2, '0', pad),
        'e' => push_num(out, i64::from(t.day), 2, ' ', pad),
        'H' => push_num(out, i64::from(t.hour), 2, '0', pad),
        'I' => push_num(out, i64::from(hour12), 2, '0', pad),
        'k' => push_num(out, i64::from(t.hour), 2, ' ', pad),
        'l' => push_num(out, i64::from(hour12), 2, ' ', pad),
        'j' => push_num(out, i64::from(t.yday) + 1, 3, '0', pad),
        'm' => push_num(out, i64::from(t.month), 2, '0', pad),
        'M' => push_num(out, i64::from(t.minute), 2, '0', pad),
        'S' => push_num(out, i64::from(t.second), 2, '0', pad),
        'y' => push_num(out, t.year.rem_euclid(100), 2, '0', pad),
        'Y' => push_num(out, t.year, 1, '0', pad),
        'G' => push_num(out, t.iso_week().0, 1, '0', pad),
        'g' => push_num(out, t.iso_week().0.rem_euclid(100), 2, '0', pad),
        'V' => push_num(out, i64::from(t.iso_week().1), 2, '0', pad),
        'u' => push_num(out, i64::from((t.weekday + 6) % 7 + 1), 1, '0', pad),
        'w' => push_num(out, i64::from(t.weekday), 1, '0', pad),
        'U' => push_num(out, i64::from((t.yday + 7 - t.weekday) / 7), 2, '0', pad),
        'W' => push_num(
            out,
            i64::from((t.yday + 7 - (t.weekday + 6) % 7) / 7),
            2,
            '0',
            pad,
        ),
        'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
        'P' => out.push_str(if t.hour < 12 { "am" } else { "pm" }),
        's' => push_num(out, unix_secs, 1, '0', pad),
        'z' => out.push_str("+0000"),
        'Z' => out.push_str("UTC"),
        'n' => out.push('\n'),
        't' => out.push('\t'),
        '%' => out.push('%'),
        'c' => out.push_str(&format("%a %b %e %H:%M:%S %Y", unix_secs)),
        'D' | 'x' => out.push_str(&format("%m/%d/%y", unix_secs)),
        'F' => out.push_str(&format("%Y-%m-%d", unix_secs)),
        'T' | 'X' => out.push_str(&format("%H:%M:%S", unix_secs)),
        'R' => out.push_str(&format("%H:%M", unix_secs)),
        'r' => out.push_str(&format("%I:%M:%S %p", unix_secs)),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_leap_days() {
        assert_eq!(
            format("%Y-%m-%d %H:%M:%S %a %j", 0),
            "1970-01-01 00:00:00 Thu 001"
        );
        // 2024-02-29T12:34:56Z
        assert_eq!(
            format("%F %T %A %j", 1_709_210_096),
            "2024-02-29 12:34:56 Thursday 060"
        );
        // 2000-12-31T23:59:59Z: leap century year, last day
        assert_eq!(
            format("%d %b %Y %j %U %W", 978_307_199),
            "31 Dec 2000 366 53 52"
        );
        // before the epoch: 1969-12-31T23:00:00Z
        assert_eq!(format("%F %H", -3600), "1969-12-31 23");
    }

    #[test]
    fn flags_iso_week_and_unknown() {
        // 2021-01-03 (Sunday) belongs to ISO week 53 of 2020.
        assert_eq!(
            format("%G-W%V-%u %-d %e|%_m|%Q", 1_609_675_200),
            "2020-W53-7 3  3| 1|%Q"
        );
        assert_eq!(format("100%%", 0), "100%");
        assert_eq!(format("trailing %", 0), "trailing %");
    }
}
