//! Byte quantities (`256Mi`, `1G`, `1048576`) as Kubernetes writes them.

use super::SpecIssue;

/// Parses a Kubernetes quantity into bytes; fractions are allowed (`1.5Gi`)
/// and rounded down. Milli and exponent forms make no sense for bytes and
/// are refused with a hint.
pub fn bytes(value: &str, path: &str) -> Result<u64, SpecIssue> {
    let bad = || {
        SpecIssue::new(
            path,
            format!("{value:?} is not a byte quantity; write e.g. 256Mi, 1Gi or 500M"),
        )
    };
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut total = whole.checked_mul(multiplier).ok_or_else(bad)?;
    if !fraction.is_empty() {
        let digits: u32 = fraction.len().try_into().map_err(|_| bad())?;
        let numerator: u64 = fraction.parse().map_err(|_| bad())?;
        let scale = 10u64.checked_pow(digits).ok_or_else(bad)?;
        let part = u128::from(numerator) * u128::from(multiplier) / u128::from(scale);
        total = total
            .checked_add(u64::try_from(part).map_err(|_| bad())?)
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats bytes as the largest exact binary quantity (`150Mi`, `1536Ki`).
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{suffix}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_plain_and_fractional_forms() {
        let cases = [
            ("1048576", 1_048_576),
            ("100Mi", 100 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("500M", 500_000_000),
            ("2k", 2_000),
            ("0.5Ki", 512),
        ];
        for (text, expected) in cases {
            assert_eq!(bytes(text, "spec.x").unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn nonsense_is_refused_with_the_field_path() {
        for text in [
            "",
            "lots",
            "100m",
            "1e3",
            "Mi",
            "1.2.3Mi",
            "99999999999999Pi",
        ] {
            let issue = bytes(text, "spec.cache.memory").unwrap_err();
            assert_eq!(issue.path, "spec.cache.memory");
            assert!(issue.message.contains("byte quantity"), "{text}: {issue:?}");
        }
    }

    #[test]
    fn formatting_picks_the_largest_exact_unit() {
        assert_eq!(format_bytes(150 << 20), "150Mi");
        assert_eq!(format_bytes(2 << 30), "2Gi");
        assert_eq!(format_bytes(1536 << 10), "1536Ki");
        assert_eq!(format_bytes(1000), "1000");
    }
}
