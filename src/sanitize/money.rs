//! Money amounts as decimal strings.
//!
//! A JSON number is a binary float to most parsers (`0.1 + 0.2`), so an amount must travel as a
//! JSON string holding a plain decimal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, with no exponent, no
//! leading `+`, no spaces, no leading zeros, no `.5` and no `5.`; at most as many decimals as
//! the currency's ISO 4217 minor unit (none at all for JPY), and at most a configured number of
//! integer digits (callers use 15 by default).

use std::fmt;

use serde_json::Value;

/// Why [`check_amount`] refused an amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// The amount is not a JSON string (typically a JSON number was given).
    NotAString,
    /// The string is not a plain decimal; the reason says what is wrong (it never quotes the
    /// amount).
    Malformed(String),
    /// More decimal places than the currency has minor units.
    TooManyDecimals {
        /// The currency code.
        currency: String,
        /// Its ISO 4217 minor units.
        allowed: u8,
    },
    /// Not an active ISO 4217 alphabetic code with minor units (upper case, three letters).
    /// Holds the code as given, cut to a few characters.
    UnknownCurrency(String),
    /// More integer digits than allowed.
    TooLarge {
        /// The most integer digits allowed.
        max_integer_digits: u8,
    },
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAString => f.write_str(
                "amounts must be JSON strings holding a decimal number, such as \"125.40\"; \
                 JSON numbers are refused because parsers turn them into binary floats",
            ),
            Self::Malformed(reason) => write!(
                f,
                "malformed amount: {reason}; write amounts as plain decimals such as \"125.40\" \
                 or \"-3\""
            ),
            Self::TooManyDecimals {
                currency,
                allowed: 0,
            } => write!(
                f,
                "{currency} amounts have no decimal places; send whole units such as \"100\""
            ),
            Self::TooManyDecimals {
                currency,
                allowed: 1,
            } => write!(f, "{currency} amounts have at most 1 decimal place"),
            Self::TooManyDecimals { currency, allowed } => {
                write!(
                    f,
                    "{currency} amounts have at most {allowed} decimal places"
                )
            }
            Self::UnknownCurrency(code) => write!(
                f,
                "unknown currency code {code:?}; use an active ISO 4217 code in upper case, \
                 such as \"EUR\""
            ),
            Self::TooLarge { max_integer_digits } => write!(
                f,
                "amounts have at most {max_integer_digits} digits before the decimal point"
            ),
        }
    }
}

impl std::error::Error for MoneyError {}

/// The active ISO 4217 alphabetic codes (list one, as published on 2026-01-01) with their
/// minor units, sorted by code. Codes whose minor unit is "N.A." (precious metals, XDR, bond
/// market units, XSU, XUA, XTS, XXX) are left out on purpose: they have no decimal rule.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAD", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// The ISO 4217 minor units (decimal places) of an active currency code, e.g. `JPY` → 0,
/// `EUR` → 2, `BHD` → 3, `CLF` → 4. `None` for unknown codes, lower-case codes, and codes
/// without minor units (`XAU`, `XDR`, ...).
pub fn minor_units(currency: &str) -> Option<u8> {
    CURRENCIES
        .binary_search_by(|(code, _)| code.cmp(&currency))
        .ok()
        .and_then(|i| CURRENCIES.get(i))
        .map(|&(_, units)| units)
}

/// Checks that `amount` is a decimal string valid for `currency` (see the module docs).
pub fn check_amount(
    amount: &Value,
    currency: &str,
    max_integer_digits: u8,
) -> Result<(), MoneyError> {
    let Some(allowed) = minor_units(currency) else {
        return Err(MoneyError::UnknownCurrency(
            currency.chars().take(8).collect(),
        ));
    };
    let Value::String(text) = amount else {
        return Err(MoneyError::NotAString);
    };
    let b = text.as_bytes();
    let malformed = |reason: &str| Err(MoneyError::Malformed(reason.to_owned()));

    let mut i = 0;
    match b.first() {
        None => return malformed("the amount is empty"),
        Some(b'-') => i = 1,
        Some(b'+') => return malformed("a leading '+' is not allowed"),
        Some(_) => {}
    }
    let int_start = i;
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    let int_digits = i - int_start;
    if int_digits == 0 {
        return match b.get(i) {
            Some(b'.') => malformed("a digit is required before the decimal point (0.5, not .5)"),
            Some(c) if c.is_ascii_whitespace() => malformed("spaces are not allowed"),
            _ => malformed("the amount must start with a digit or '-'"),
        };
    }
    if int_digits > 1 && b.get(int_start) == Some(&b'0') {
        return malformed("leading zeros are not allowed");
    }
    let mut decimals = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        decimals = i - frac_start;
        if decimals == 0 {
            return malformed("a digit is required after the decimal point (5 or 5.0, not 5.)");
        }
    }
    match b.get(i) {
        None => {}
        Some(b'e' | b'E') => return malformed("exponent notation is not allowed"),
        Some(c) if c.is_ascii_whitespace() => return malformed("spaces are not allowed"),
        Some(b',' | b'_' | b'\'') => {
            return malformed("use '.' as the decimal separator and no digit grouping");
        }
        Some(b'.') => return malformed("only one decimal point is allowed"),
        Some(_) => return malformed("only digits, one '.' and a leading '-' are allowed"),
    }
    if decimals > usize::from(allowed) {
        return Err(MoneyError::TooManyDecimals {
            currency: currency.to_owned(),
            allowed,
        });
    }
    if int_digits > usize::from(max_integer_digits) {
        return Err(MoneyError::TooLarge { max_integer_digits });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(amount: &str, currency: &str) -> Result<(), MoneyError> {
        check_amount(&json!(amount), currency, 15)
    }

    fn malformed(amount: &str) -> bool {
        matches!(check(amount, "EUR"), Err(MoneyError::Malformed(_)))
    }

    #[test]
    fn table_is_sorted_and_well_formed() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{pair:?}");
        }
        for &(code, units) in CURRENCIES {
            assert!(code.len() == 3 && code.bytes().all(|c| c.is_ascii_uppercase()));
            assert!(units <= 4, "{code}");
            assert_eq!(minor_units(code), Some(units));
        }
        assert_eq!(CURRENCIES.len(), 165);
    }

    #[test]
    fn minor_units_table() {
        for (code, units) in [
            ("JPY", 0),
            ("KRW", 0),
            ("EUR", 2),
            ("USD", 2),
            ("GBP", 2),
            ("CHF", 2),
            ("BHD", 3),
            ("KWD", 3),
            ("OMR", 3),
            ("JOD", 3),
            ("TND", 3),
            ("LYD", 3),
            ("IQD", 3),
            ("CLF", 4),
            ("UYW", 4),
            ("ISK", 0),
            ("VND", 0),
            ("XOF", 0),
        ] {
            assert_eq!(minor_units(code), Some(units), "{code}");
        }
        for code in [
            "XAU", "XAG", "XDR", "XXX", "XTS", "eur", "EU", "EURO", "", "ABC",
        ] {
            assert_eq!(minor_units(code), None, "{code}");
        }
    }

    #[test]
    fn accepts_plain_decimals() {
        assert_eq!(check("125.40", "EUR"), Ok(()));
        assert_eq!(check("125.4", "EUR"), Ok(()));
        assert_eq!(check("125", "EUR"), Ok(()));
        assert_eq!(check("0", "EUR"), Ok(()));
        assert_eq!(check("0.05", "EUR"), Ok(()));
        assert_eq!(check("-3.10", "USD"), Ok(()));
        assert_eq!(check("100", "JPY"), Ok(()));
        assert_eq!(check("1.234", "BHD"), Ok(()));
        assert_eq!(check("1.2345", "CLF"), Ok(()));
        assert_eq!(check("999999999999999.99", "EUR"), Ok(()));
    }

    #[test]
    fn refuses_too_many_decimals() {
        assert_eq!(
            check("125.400", "EUR"),
            Err(MoneyError::TooManyDecimals {
                currency: "EUR".into(),
                allowed: 2
            })
        );
        assert_eq!(
            check("100.5", "JPY"),
            Err(MoneyError::TooManyDecimals {
                currency: "JPY".into(),
                allowed: 0
            })
        );
        assert!(matches!(
            check("1.2345", "BHD"),
            Err(MoneyError::TooManyDecimals { allowed: 3, .. })
        ));
        let e = check("125.400", "EUR").unwrap_err();
        assert_eq!(e.to_string(), "EUR amounts have at most 2 decimal places");
        let e = check("100.5", "JPY").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("JPY amounts have no decimal places")
        );
    }

    #[test]
    fn refuses_malformed_strings() {
        for s in [
            "1e3", "1E3", "1.5e2", "+5.00", " 5", "5 ", "5. 0", "05", "00.5", "-05", ".5", "5.",
            "-", "", "-.5", "1,000.00", "1_000", "1.2.3", "NaN", "Infinity", "0x10", "５", "1.0\n",
            "--1", "- 1",
        ] {
            assert!(malformed(s), "{s:?}");
        }
        assert_eq!(
            check("1e3", "EUR"),
            Err(MoneyError::Malformed(
                "exponent notation is not allowed".into()
            ))
        );
        // Messages never quote the amount.
        let e = check("12345abc", "EUR").unwrap_err();
        assert!(!e.to_string().contains("12345"));
    }

    #[test]
    fn refuses_numbers_and_other_types() {
        for v in [
            json!(1000),
            json!(125.4),
            json!(null),
            json!(true),
            json!(["1"]),
            json!({"a": "1"}),
        ] {
            assert_eq!(check_amount(&v, "EUR", 15), Err(MoneyError::NotAString));
        }
        assert!(MoneyError::NotAString.to_string().contains("\"125.40\""));
    }

    #[test]
    fn refuses_unknown_currencies() {
        assert_eq!(
            check("1.00", "XYZ"),
            Err(MoneyError::UnknownCurrency("XYZ".into()))
        );
        assert!(matches!(
            check("1.00", "eur"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(matches!(
            check("1", "XAU"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        let long = "X".repeat(1000);
        let e = check("1", &long).unwrap_err();
        assert_eq!(e, MoneyError::UnknownCurrency("X".repeat(8)));
        assert!(e.to_string().contains("ISO 4217"));
    }

    #[test]
    fn refuses_too_many_integer_digits() {
        assert_eq!(check("123456789012345", "EUR"), Ok(()));
        assert_eq!(check("-123456789012345.00", "EUR"), Ok(()));
        assert_eq!(
            check("1234567890123456", "EUR"),
            Err(MoneyError::TooLarge {
                max_integer_digits: 15
            })
        );
        assert_eq!(
            check("1234567890123456", "EUR").unwrap_err().to_string(),
            "amounts have at most 15 digits before the decimal point"
        );
        assert_eq!(
            check_amount(&json!("1000"), "EUR", 3),
            Err(MoneyError::TooLarge {
                max_integer_digits: 3
            })
        );
    }

    fn arb_currency() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["EUR", "USD", "JPY", "KRW", "BHD", "KWD", "CLF", "UYW"])
    }

    fn amount(negative: bool, int: u64, digits: &[u8]) -> String {
        let sign = if negative { "-" } else { "" };
        if digits.is_empty() {
            return format!("{sign}{int}");
        }
        let frac: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        format!("{sign}{int}.{frac}")
    }

    proptest! {
        /// A well-formed amount with up to the currency's minor units of decimals is accepted;
        /// with one decimal more than the minor units it is refused.
        #[test]
        fn decimals_up_to_minor_units(
            currency in arb_currency(),
            negative in any::<bool>(),
            int in 0u64..1_000_000_000_000_000,
            digits in prop::collection::vec(0u8..10, 5),
            k in 0usize..=4,
        ) {
            let allowed = usize::from(minor_units(currency).unwrap());
            let ok = amount(negative, int, &digits[..k.min(allowed)]);
            prop_assert_eq!(check_amount(&json!(ok), currency, 15), Ok(()));
            let over = amount(negative, int, &digits[..allowed + 1]);
            prop_assert_eq!(
                check_amount(&json!(over), currency, 15),
                Err(MoneyError::TooManyDecimals { currency: currency.to_owned(), allowed: allowed as u8 })
            );
        }
    }
}
