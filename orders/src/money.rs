//! Exact money: integer cents, parsed from decimal text without ever touching `f64`.

use std::fmt;

/// An amount of money in cents.
///
/// Why integer cents: `49.99` has no exact binary floating-point representation, and totals computed in `f64`
/// drift. Parsing the decimal text straight into cents keeps every amount exact. On the wire it is the decimal
/// string `"49.99"`, so no consumer is tempted to read it into a float either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money {
    cents: i64,
}

/// Why a decimal could not become [`Money`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a decimal number (`12`, `12.5`, `1.25e1`).
    #[error("must be a decimal number")]
    NotANumber,
    /// More than two decimal places that are not zero (`0.001`).
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    /// Beyond what an amount may hold.
    #[error("is too large")]
    TooLarge,
}

impl Money {
    /// Amount from a whole number of cents.
    pub const fn from_cents(cents: i64) -> Self {
        Self { cents }
    }

    /// The amount in cents.
    pub const fn cents(self) -> i64 {
        self.cents
    }

    /// Multiplies by a quantity, `None` on overflow.
    pub fn checked_mul(self, quantity: u32) -> Option<Self> {
        self.cents.checked_mul(i64::from(quantity)).map(Self::from_cents)
    }

    /// Adds two amounts, `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.cents.checked_add(other.cents).map(Self::from_cents)
    }

    /// Parses JSON number text (`49.99`, `5`, `4.999e1`, `-3.5`) into an exact amount.
    ///
    /// Trailing zeros beyond the cents are fine (`49.990`); any other third decimal is
    /// [`MoneyError::TooPrecise`], never rounded.
    pub fn parse_decimal(text: &str) -> Result<Self, MoneyError> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i32>().map_err(|_| MoneyError::NotANumber)?),
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || mantissa.ends_with('.') {
            return Err(MoneyError::NotANumber);
        }
        // The value is digits × 10^(exponent − fraction digits); in cents, × 10^(that + 2).
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        let fraction_len = i32::try_from(fraction.len()).map_err(|_| MoneyError::TooPrecise)?;
        let mut shift = exponent.saturating_add(2).saturating_sub(fraction_len);
        let mut digits = digits.to_owned();
        while shift < 0 {
            match digits.pop() {
                Some('0') => shift += 1,
                None => break, // the value is zero
                Some(_) => return Err(MoneyError::TooPrecise),
            }
        }
        if digits.is_empty() {
            return Ok(Self::from_cents(0));
        }
        const MAX_DIGITS: i32 = 18; // keeps the result inside i64
        if digits.len() as i32 + shift > MAX_DIGITS {
            return Err(MoneyError::TooLarge);
        }
        let mut cents: i64 = digits.parse().map_err(|_| MoneyError::TooLarge)?;
        for _ in 0..shift {
            cents = cents.checked_mul(10).ok_or(MoneyError::TooLarge)?;
        }
        Ok(Self::from_cents(if negative { -cents } else { cents }))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.cents < 0 { "-" } else { "" };
        let abs = self.cents.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Money::parse_decimal(&text).map_err(|e| serde::de::Error::custom(format!("amount {text:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exactly() {
        let cents = |s| Money::parse_decimal(s).map(Money::cents);
        assert_eq!(cents("49.99"), Ok(4999));
        assert_eq!(cents("5"), Ok(500));
        assert_eq!(cents("0.1"), Ok(10));
        assert_eq!(cents("49.990"), Ok(4999));
        assert_eq!(cents("4.999e1"), Ok(4999));
        assert_eq!(cents("4999E-2"), Ok(4999));
        assert_eq!(cents("-3.5"), Ok(-350));
        assert_eq!(cents("0.00"), Ok(0));
        assert_eq!(cents("0.001"), Err(MoneyError::TooPrecise));
        assert_eq!(cents("1e-3"), Err(MoneyError::TooPrecise));
        assert_eq!(cents("1e40"), Err(MoneyError::TooLarge));
        assert_eq!(cents("99999999999999999999"), Err(MoneyError::TooLarge));
        for bad in ["", ".5", "5.", "abc", "1.2.3", "1e", "--1", "+1", "NaN", "Infinity", "1_0"] {
            assert_eq!(cents(bad), Err(MoneyError::NotANumber), "{bad:?}");
        }
    }

    #[test]
    fn displays_and_serializes_as_decimal_string() {
        assert_eq!(Money::from_cents(4999).to_string(), "49.99");
        assert_eq!(Money::from_cents(5).to_string(), "0.05");
        assert_eq!(Money::from_cents(-350).to_string(), "-3.50");
        assert_eq!(serde_json::to_string(&Money::from_cents(4999)).unwrap(), r#""49.99""#);
        assert_eq!(serde_json::from_str::<Money>(r#""49.99""#).unwrap(), Money::from_cents(4999));
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(cents in -1_000_000_000_000i64..1_000_000_000_000) {
            let money = Money::from_cents(cents);
            prop_assert_eq!(Money::parse_decimal(&money.to_string()), Ok(money));
        }
    }
}
