//! The scalar units of the config: durations (`250ms`, `2s`, `1m`, `1h`, `30d`) and
//! percentages (`99.9%`). Parsed by hand so the error can say exactly what was wrong.

use std::time::Duration;

/// Parses `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`. The number may carry a
/// fraction (`1.5s`); the result is rounded to whole nanoseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. `250ms`, `2s`, `1m`, `1h`, `30d`"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration: write e.g. `250ms`, `2s`, `1m`"))?;
    let unit_secs = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("`{unit}` is not a duration unit: use ms, s, m, h or d")),
    };
    let secs = value * unit_secs;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(Duration::from_nanos((secs * 1e9).round() as u64))
}

/// Formats a duration the way the config writes it, choosing the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ms", d.as_secs_f64() * 1000.0);
    }
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses `99.9%` into the ratio 0.999. The value must lie strictly between 0% and 100%:
/// an objective of 100% has no error budget, and 0% is no objective.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let invalid = || format!("`{text}` is not a percentage: write e.g. `99.9%`");
    let number = text.strip_suffix('%').ok_or_else(invalid)?.trim();
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    // Move the decimal point two places in the text, so `99.9%` is the double nearest
    // 0.999, not 99.9 / 100 (0.9990000000000001).
    let int = format!("00{int}");
    let (whole, hundredths) = int.split_at(int.len() - 2);
    let ratio: f64 = format!("{whole}.{hundredths}{frac}").parse().map_err(|_| invalid())?;
    if !(ratio > 0.0 && ratio < 1.0) {
        return Err(format!("`{text}` must lie strictly between 0% and 100%"));
    }
    Ok(ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10y").unwrap_err().contains("not a duration unit"));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("1..5s").is_err());
    }

    #[test]
    fn durations_round_trip() {
        for text in ["250ms", "2s", "1m", "90s", "1h", "30d", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("99%"), Ok(0.99));
        assert_eq!(parse_ratio("99.9%"), Ok(0.999));
        assert_eq!(parse_ratio("99.95%"), Ok(0.9995));
        assert_eq!(parse_ratio("5%"), Ok(0.05));
        assert_eq!(parse_ratio("0.1%"), Ok(0.001));
        assert!(parse_ratio("-1%").is_err() && parse_ratio("1e2%").is_err() && parse_ratio(".5%").is_err());
        assert!(parse_ratio("100%").is_err());
        assert!(parse_ratio("0%").is_err());
        assert!(parse_ratio("99.9").unwrap_err().contains("not a percentage"));
    }
}
