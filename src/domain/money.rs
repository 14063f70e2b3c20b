//! Money: currencies with their minor units, and the one rounding rule.
//!
//! Amounts are `rust_decimal::Decimal`, never floats. Everything upstream of the
//! `round` billing step works at full precision; [`Rounding::round`] is the only
//! function that turns an amount into the currency's minor unit, and it is called
//! by the `round` step (and by steps placed after it) and nowhere else.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency and the number of digits of its minor unit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: [u8; 3],
    minor_units: u8,
}

/// ISO 4217 codes this build knows, with their minor units.
const KNOWN: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    /// The currency with ISO code `code` (upper case), if this build knows it.
    pub fn from_code(code: &str) -> Option<Currency> {
        KNOWN.iter().find(|(c, _)| *c == code).map(|&(c, minor_units)| {
            let b = c.as_bytes();
            Currency {
                code: [b[0], b[1], b[2]],
                minor_units,
            }
        })
    }

    /// The three-letter ISO code.
    pub fn code(&self) -> &str {
        // The bytes come from the KNOWN table, which is ASCII.
        std::str::from_utf8(&self.code).expect("currency codes are ASCII")
    }

    /// Digits after the decimal point of the minor unit: USD 2, JPY 0, KWD 3.
    pub fn minor_units(&self) -> u32 {
        u32::from(self.minor_units)
    }

    /// Whether `amount` is a whole number of minor units (e.g. a credit of 10.005 USD is not).
    pub fn is_whole_minor_units(&self, amount: Decimal) -> bool {
        amount.normalize().scale() <= self.minor_units()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::from_code(s).ok_or_else(|| {
            let known: Vec<&str> = KNOWN.iter().map(|(c, _)| *c).collect();
            format!(
                "unknown currency {s:?}; known ISO 4217 codes: {}",
                known.join(", ")
            )
        })
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = KNOWN.iter().map(|(c, _)| *c).collect();
        schemars::json_schema!({"type": "string", "enum": codes, "description": "an ISO 4217 code this build knows"})
    }
}

/// How a value exactly halfway between two minor units (and any other value) is rounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Banker's rounding: halves go to the even neighbour (2.345 → 2.34, 2.355 → 2.36).
    #[default]
    HalfEven,
    /// Halves go away from zero (2.345 → 2.35).
    HalfUp,
    /// Halves go toward zero (2.345 → 2.34, 2.355 → 2.35).
    HalfDown,
    /// Always toward zero: truncation (2.349 → 2.34).
    Down,
    /// Always away from zero (2.341 → 2.35).
    Up,
}

impl RoundingMode {
    /// The name used in configuration: `half_even`, `half_up`, `half_down`, `down`, `up`.
    pub fn name(self) -> &'static str {
        match self {
            RoundingMode::HalfEven => "half_even",
            RoundingMode::HalfUp => "half_up",
            RoundingMode::HalfDown => "half_down",
            RoundingMode::Down => "down",
            RoundingMode::Up => "up",
        }
    }

    fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
            RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::HalfDown => RoundingStrategy::MidpointTowardZero,
            RoundingMode::Down => RoundingStrategy::ToZero,
            RoundingMode::Up => RoundingStrategy::AwayFromZero,
        }
    }
}

/// The rounding rule of a partition: its currency's minor unit and a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rounding {
    pub currency: Currency,
    pub mode: RoundingMode,
}

impl Rounding {
    pub fn new(currency: Currency, mode: RoundingMode) -> Self {
        Rounding { currency, mode }
    }

    /// Rounds `amount` to the currency's minor unit, and gives it exactly that many
    /// decimal places, so that `5` prints as `5.00` in USD and `5` in JPY.
    ///
    /// Rounding is monotone: `a <= b` implies `round(a) <= round(b)`. The billing steps
    /// rely on that to keep every net line non-negative after rounding.
    pub fn round(&self, amount: Decimal) -> Decimal {
        let dp = self.currency.minor_units();
        if amount.scale() == dp {
            return amount;
        }
        let mut rounded = amount.round_dp_with_strategy(dp, self.mode.strategy());
        rounded.rescale(dp);
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn usd(mode: RoundingMode) -> Rounding {
        Rounding::new(Currency::from_code("USD").unwrap(), mode)
    }

    #[test]
    fn minor_units_per_currency() {
        assert_eq!(Currency::from_code("USD").unwrap().minor_units(), 2);
        assert_eq!(Currency::from_code("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::from_code("KWD").unwrap().minor_units(), 3);
        assert!(Currency::from_code("usd").is_none());
        assert!("XXX"
            .parse::<Currency>()
            .unwrap_err()
            .contains("unknown currency"));
    }

    #[test]
    fn half_even_is_bankers_rounding() {
        // 2.345 is exactly halfway: the even neighbour is 2.34.
        // 2.355 is exactly halfway: the even neighbour is 2.36.
        // 2.3451 is past halfway: 2.35.
        let r = usd(RoundingMode::HalfEven);
        assert_eq!(r.round(dec!(2.345)).to_string(), "2.34");
        assert_eq!(r.round(dec!(2.355)).to_string(), "2.36");
        assert_eq!(r.round(dec!(2.3451)).to_string(), "2.35");
        assert_eq!(r.round(dec!(-2.345)).to_string(), "-2.34");
    }

    #[test]
    fn other_modes() {
        assert_eq!(usd(RoundingMode::HalfUp).round(dec!(2.345)).to_string(), "2.35");
        assert_eq!(usd(RoundingMode::HalfDown).round(dec!(2.355)).to_string(), "2.35");
        assert_eq!(usd(RoundingMode::Down).round(dec!(2.349)).to_string(), "2.34");
        assert_eq!(usd(RoundingMode::Up).round(dec!(2.341)).to_string(), "2.35");
    }

    #[test]
    fn rounding_pads_to_minor_units() {
        // 5 USD prints as 5.00; 1234.5 JPY rounds half-even to 1234 (4 is even);
        // 1.2345 KWD (3 minor digits) rounds half-even to 1.234.
        assert_eq!(usd(RoundingMode::HalfEven).round(dec!(5)).to_string(), "5.00");
        let jpy = Rounding::new(Currency::from_code("JPY").unwrap(), RoundingMode::HalfEven);
        assert_eq!(jpy.round(dec!(1234.5)).to_string(), "1234");
        let kwd = Rounding::new(Currency::from_code("KWD").unwrap(), RoundingMode::HalfEven);
        assert_eq!(kwd.round(dec!(1.2345)).to_string(), "1.234");
    }

    #[test]
    fn whole_minor_units() {
        let usd = Currency::from_code("USD").unwrap();
        assert!(usd.is_whole_minor_units(dec!(10.50)));
        assert!(usd.is_whole_minor_units(dec!(10.500)));
        assert!(!usd.is_whole_minor_units(dec!(10.005)));
    }
}
