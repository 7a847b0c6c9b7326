//! Masking of card numbers (PANs) in what the gateway writes down (access log paths, audit
//! object ids): a run of 13 to 19 digits that passes the Luhn check keeps its first six and
//! last four digits, the rest become `*` (PCI DSS 3.4 display rule).

use std::borrow::Cow;

/// `s` with every Luhn-valid run of 13–19 digits masked.
pub fn mask_pans(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let run = &bytes[start..i];
        if (13..=19).contains(&run.len()) && luhn(run) {
            let buf = out.get_or_insert_with(|| bytes.to_vec());
            for b in &mut buf[start + 6..i - 4] {
                *b = b'*';
            }
        }
    }
    match out {
        // Only ASCII digits were replaced by ASCII `*`: still UTF-8.
        Some(buf) => Cow::Owned(String::from_utf8(buf).unwrap_or_default()),
        None => Cow::Borrowed(s),
    }
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_masked_and_other_numbers_kept() {
        assert_eq!(
            mask_pans("/v1/cards/4111111111111111/limits"),
            "/v1/cards/411111******1111/limits"
        );
        // Not Luhn-valid, too short, too long: kept.
        assert_eq!(
            mask_pans("/v1/cards/4111111111111112"),
            "/v1/cards/4111111111111112"
        );
        assert_eq!(mask_pans("acc-100"), "acc-100");
        assert_eq!(mask_pans("12345678901"), "12345678901");
        assert_eq!(
            mask_pans("41111111111111111111111"),
            "41111111111111111111111"
        );
        assert!(matches!(mask_pans("no digits"), Cow::Borrowed(_)));
    }
}
