//! Exact money: currencies with their ISO 4217 minor-unit scale, and amounts in integer minor units.
//!
//! `rust_decimal` appears only in the edge functions that parse and print decimals; every balance and
//! amount inside the engine is an integer count of minor units (cents, yen, fils).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ParseError;

macro_rules! currencies {
    ($($code:ident = $scale:literal),* $(,)?) => {
        /// An ISO 4217 currency the ledger supports, with its minor-unit scale.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum Currency {
            $($code),*
        }

        impl Currency {
            /// Every supported currency, in code order.
            pub const ALL: &'static [Currency] = &[$(Currency::$code),*];

            /// The three-letter ISO 4217 code.
            pub const fn code(self) -> &'static str {
                match self {
                    $(Currency::$code => stringify!($code)),*
                }
            }

            /// Decimal places of the minor unit: 2 for USD (cents), 0 for JPY, 3 for KWD (fils).
            pub const fn scale(self) -> u32 {
                match self {
                    $(Currency::$code => $scale),*
                }
            }

            /// Parses an upper-case ISO 4217 code.
            pub fn parse(code: &str) -> Result<Currency, ParseError> {
                match code {
                    $(stringify!($code) => Ok(Currency::$code),)*
                    _ => Err(ParseError::UnknownCurrency),
                }
            }
        }
    };
}

currencies!(
    AED = 2,
    AUD = 2,
    BHD = 3,
    BRL = 2,
    CAD = 2,
    CHF = 2,
    CLP = 0,
    CNY = 2,
    CZK = 2,
    DKK = 2,
    EUR = 2,
    GBP = 2,
    HKD = 2,
    HUF = 2,
    IDR = 2,
    ILS = 2,
    INR = 2,
    ISK = 0,
    JOD = 3,
    JPY = 0,
    KRW = 0,
    KWD = 3,
    MXN = 2,
    NOK = 2,
    NZD = 2,
    OMR = 3,
    PLN = 2,
    SAR = 2,
    SEK = 2,
    SGD = 2,
    THB = 2,
    TND = 3,
    TRY = 2,
    TWD = 2,
    UGX = 0,
    USD = 2,
    VND = 0,
    XAF = 0,
    XOF = 0,
    ZAR = 2,
);

impl Currency {
    /// Number of supported currencies; system account balances are kept in an array of this size.
    pub const COUNT: usize = Currency::ALL.len();

    /// Dense index in `0..COUNT`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Prints a signed count of minor units as an exact decimal at this currency's scale,
    /// e.g. `-1234` USD as `-12.34` and `5` JPY as `5`.
    pub fn format_minor(self, minor: i128) -> String {
        Decimal::from_i128_with_scale(minor, self.scale()).to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// A non-negative amount of money in integer minor units of some currency.
///
/// The currency travels beside the amount (in the command or the wallet); an `Amount` alone is only
/// a count. Every amount is at most [`Amount::MAX`]: ten trillion dollars in cents, a quadrillion yen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Amount(u64);

impl Amount {
    pub const ZERO: Amount = Amount(0);
    /// The largest amount one command may carry, in minor units (10^15).
    pub const MAX_MINOR: u64 = 1_000_000_000_000_000;
    pub const MAX: Amount = Amount(Amount::MAX_MINOR);

    /// An amount of `minor` minor units, or `None` above [`Amount::MAX_MINOR`].
    pub const fn from_minor(minor: u64) -> Option<Amount> {
        if minor <= Amount::MAX_MINOR { Some(Amount(minor)) } else { None }
    }

    pub const fn minor(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses a decimal string such as `"12.50"` in `currency`: exact, never rounded.
    ///
    /// Rejects text that is not a plain decimal, a negative value, more decimal places than the
    /// currency has (`"0.001"` USD), and anything above [`Amount::MAX`]. Zero is accepted here;
    /// use [`Amount::parse_positive`] where zero is meaningless.
    pub fn parse(text: &str, currency: Currency) -> Result<Amount, ParseError> {
        let text = text.trim();
        // rust_decimal also accepts a few forms we do not want at a money API edge ("_" separators,
        // a leading "+"); only digits with one optional point and an optional leading minus pass.
        let plain = !text.is_empty()
            && text.strip_prefix('-').unwrap_or(text).bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.bytes().filter(|&b| b == b'.').count() <= 1
            && text.bytes().any(|b| b.is_ascii_digit());
        if !plain {
            return Err(ParseError::AmountSyntax);
        }
        let decimal = Decimal::from_str_exact(text).map_err(|_| ParseError::AmountSyntax)?;
        Amount::from_decimal(decimal, currency)
    }

    /// Like [`Amount::parse`], but zero is rejected too.
    pub fn parse_positive(text: &str, currency: Currency) -> Result<Amount, ParseError> {
        let amount = Amount::parse(text, currency)?;
        if amount.is_zero() {
            return Err(ParseError::AmountNotPositive);
        }
        Ok(amount)
    }

    /// Converts an exact decimal in `currency` to minor units, with the same rules as [`Amount::parse`].
    pub fn from_decimal(decimal: Decimal, currency: Currency) -> Result<Amount, ParseError> {
        if decimal.is_sign_negative() && !decimal.is_zero() {
            return Err(ParseError::AmountNegative);
        }
        // Trailing zeros are not extra precision: "12.500" USD is 1250 cents.
        let normalized = decimal.normalize();
        if normalized.scale() > currency.scale() {
            return Err(ParseError::AmountPrecision { currency, scale: currency.scale() });
        }
        let shift = currency.scale() - normalized.scale();
        let minor = 10i128
            .checked_pow(shift)
            .and_then(|factor| normalized.mantissa().checked_mul(factor))
            .ok_or(ParseError::AmountTooLarge)?;
        let minor = u64::try_from(minor.unsigned_abs()).map_err(|_| ParseError::AmountTooLarge)?;
        Amount::from_minor(minor).ok_or(ParseError::AmountTooLarge)
    }

    /// The exact decimal value in `currency`, with the currency's scale (`1250` USD → `12.50`).
    pub fn to_decimal(self, currency: Currency) -> Decimal {
        Decimal::from_i128_with_scale(i128::from(self.0), currency.scale())
    }

    /// The amount as a decimal string at the currency's scale.
    pub fn format(self, currency: Currency) -> String {
        self.to_decimal(currency).to_string()
    }
}

impl FromStr for Currency {
    type Err = ParseError;

    fn from_str(code: &str) -> Result<Currency, ParseError> {
        Currency::parse(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_know_their_scale() {
        assert_eq!(Currency::parse("USD").unwrap().scale(), 2);
        assert_eq!(Currency::parse("EUR").unwrap().scale(), 2);
        assert_eq!(Currency::parse("GBP").unwrap().scale(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().scale(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().scale(), 3);
        assert_eq!(Currency::parse("usd"), Err(ParseError::UnknownCurrency));
        assert_eq!(Currency::parse("XXX"), Err(ParseError::UnknownCurrency));
        for (index, currency) in Currency::ALL.iter().enumerate() {
            assert_eq!(currency.index(), index);
            assert_eq!(Currency::parse(currency.code()), Ok(*currency));
        }
    }

    #[test]
    fn amounts_parse_exactly_in_minor_units() {
        let usd = Currency::USD;
        assert_eq!(Amount::parse("12.50", usd).unwrap().minor(), 1250);
        assert_eq!(Amount::parse("12.5", usd).unwrap().minor(), 1250);
        assert_eq!(Amount::parse("12.500", usd).unwrap().minor(), 1250, "trailing zeros are not precision");
        assert_eq!(Amount::parse("100", usd).unwrap().minor(), 10_000);
        assert_eq!(Amount::parse("0.01", usd).unwrap().minor(), 1);
        assert_eq!(Amount::parse("0.1", Currency::KWD).unwrap().minor(), 100);
        assert_eq!(Amount::parse("0.001", Currency::KWD).unwrap().minor(), 1);
        assert_eq!(Amount::parse("7", Currency::JPY).unwrap().minor(), 7);
        assert_eq!(Amount::parse("0", usd).unwrap(), Amount::ZERO);
        assert_eq!(Amount::parse("-0", usd).unwrap(), Amount::ZERO);
    }

    #[test]
    fn amounts_never_round_and_reject_what_they_cannot_represent() {
        let usd = Currency::USD;
        assert_eq!(Amount::parse("0.001", usd), Err(ParseError::AmountPrecision { currency: usd, scale: 2 }));
        assert_eq!(
            Amount::parse("1.5", Currency::JPY),
            Err(ParseError::AmountPrecision { currency: Currency::JPY, scale: 0 })
        );
        assert_eq!(Amount::parse("-1", usd), Err(ParseError::AmountNegative));
        for bad in ["", " ", "abc", "1e3", "+1", "1_000", "1.2.3", ".", "-", "0x10", "1,5"] {
            assert_eq!(Amount::parse(bad, usd), Err(ParseError::AmountSyntax), "{bad:?}");
        }
        assert_eq!(Amount::parse("10000000000000.00", usd).unwrap(), Amount::MAX);
        assert_eq!(Amount::parse("10000000000000.01", usd), Err(ParseError::AmountTooLarge));
        assert_eq!(Amount::parse("99999999999999999999999999999", usd), Err(ParseError::AmountSyntax));
        assert_eq!(Amount::parse_positive("0.00", usd), Err(ParseError::AmountNotPositive));
        assert_eq!(Amount::from_minor(Amount::MAX_MINOR + 1), None);
    }

    #[test]
    fn amounts_print_at_the_currency_scale() {
        assert_eq!(Amount::from_minor(1250).unwrap().format(Currency::USD), "12.50");
        assert_eq!(Amount::from_minor(5).unwrap().format(Currency::USD), "0.05");
        assert_eq!(Amount::from_minor(5).unwrap().format(Currency::JPY), "5");
        assert_eq!(Amount::from_minor(1).unwrap().format(Currency::KWD), "0.001");
        assert_eq!(Currency::USD.format_minor(-1234), "-12.34");
        assert_eq!(Currency::USD.format_minor(0), "0.00");
    }
}
