//! Billing periods: calendar months, named `YYYY-MM`.
//!
//! A period is a pair of local dates; turning an instant into a local date (the
//! partition's time zone) is the engine's job, so this module needs no clock and no
//! time zone database.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU8;

/// A calendar month, the unit of billing. Orders chronologically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    /// 1..=12; never 0, so an `Option<Period>` takes no more room than a period (every
    /// customer's entity holds two).
    month: NonZeroU8,
}

/// The month `m` (1..=12) as kept.
fn month_of(m: u32) -> NonZeroU8 {
    u8::try_from(m)
        .ok()
        .and_then(NonZeroU8::new)
        .expect("a month is 1..=12")
}

impl Period {
    /// The month `year`-`month`; `None` when `month` is not 1..=12 or the year is out of range.
    pub fn new(year: i32, month: u32) -> Option<Period> {
        NaiveDate::from_ymd_opt(year, month, 1)?;
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
        Some(Period {
            year,
            month: month_of(month),
        })
    }

    /// The period that contains `date`.
    pub fn containing(date: NaiveDate) -> Period {
        Period {
            year: date.year(),
            month: month_of(date.month()),
        }
    }

    /// The month of the year, 1..=12.
    fn month(&self) -> u32 {
        u32::from(self.month.get())
    }

    /// The first day of the period.
    pub fn first_day(&self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month(), 1).expect("validated in Period::new")
    }

    /// The first day after the period.
    pub fn end(&self) -> NaiveDate {
        self.next().first_day()
    }

    /// The last day of the period.
    pub fn last_day(&self) -> NaiveDate {
        self.end().pred_opt().expect("a month has days")
    }

    pub fn contains(&self, date: NaiveDate) -> bool {
        Period::containing(date) == *self
    }

    pub fn next(&self) -> Period {
        if self.month() == 12 {
            Period {
                year: self.year + 1,
                month: month_of(1),
            }
        } else {
            Period {
                year: self.year,
                month: month_of(self.month() + 1),
            }
        }
    }

    pub fn previous(&self) -> Period {
        if self.month() == 1 {
            Period {
                year: self.year - 1,
                month: month_of(12),
            }
        } else {
            Period {
                year: self.year,
                month: month_of(self.month() - 1),
            }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month())
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("period {s:?} is not of the form YYYY-MM (e.g. 2026-11)");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        Period::new(year, month).ok_or_else(bad)
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Period {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Period".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$", "examples": ["2026-11"]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_and_an_optional_one_take_8_bytes() {
        assert_eq!(std::mem::size_of::<Period>(), 8);
        assert_eq!(std::mem::size_of::<Option<Period>>(), 8);
    }

    #[test]
    fn month_bounds() {
        let p: Period = "2026-11".parse().unwrap();
        assert_eq!(p.first_day(), NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert_eq!(p.last_day(), NaiveDate::from_ymd_opt(2026, 11, 30).unwrap());
        assert_eq!(p.next().to_string(), "2026-12");
        assert_eq!(p.next().next().to_string(), "2027-01");
        assert_eq!(
            "2027-01".parse::<Period>().unwrap().previous(),
            "2026-12".parse().unwrap()
        );
        // 2028 is a leap year: February has 29 days.
        assert_eq!("2028-02".parse::<Period>().unwrap().last_day().day(), 29);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "", "2026-00"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }
}
