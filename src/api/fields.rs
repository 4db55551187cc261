//! Field types shared by the surfaces: integers that may arrive as numeric strings (the
//! Vault CLI sends every value as a string) and durations as `"30s"`, `"1m"`, `"1h30m"`.

use serde::{Deserialize, Deserializer};

/// An integer as JSON number or numeric string (the Vault CLI sends every value as a string).
pub fn flex_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Flex { duration: false })
}

/// Seconds as a JSON number, a numeric string, or a duration string (`"30s"`, `"1m"`, `"1h30m"`).
pub fn flex_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Flex { duration: true })
}

struct Flex {
    duration: bool,
}

impl<'de> serde::de::Visitor<'de> for Flex {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.duration {
            f.write_str("whole seconds or a duration string such as \"30s\"")
        } else {
            f.write_str("an integer")
        }
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let parsed = if self.duration {
            parse_seconds(v)
        } else {
            v.trim().parse().ok()
        };
        parsed
            .map(Some)
            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }
}

/// A string, or a whole number taken as its digits: Django REST clients (and
/// django-otp) may send a code as `123456`.
pub fn flex_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

/// As [`flex_string`], for an optional field (`null` is absent).
pub fn flex_string_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    struct W(#[serde(deserialize_with = "flex_string")] String);
    Option::<W>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// A boolean as JSON `true`/`false` or as a string Go's `strconv.ParseBool` takes
/// (`"true"`, `"1"`, `"f"`, ...): the Vault CLI sends every value as a string.
pub fn flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a boolean")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Some(true)),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Some(false)),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

/// Whether `s` is free of control characters and of the bidirectional formatting
/// characters (U+061C, U+200E/F, U+202A..E, U+2066..9) that let text rewrite how a
/// terminal shows what follows it.
pub fn printable(s: &str) -> bool {
    !s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

/// `"90"`, `"90s"`, `"1m30s"`, `"1h"` → seconds. Sub-second durations are refused.
pub fn parse_seconds(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let d = humantime::parse_duration(s).ok()?;
    if d.subsec_nanos() != 0 {
        return None;
    }
    i64::try_from(d.as_secs()).ok()
}

/// Unix seconds as RFC 3339 (`2026-11-27T10:00:00Z`); before 1970, 1970; past the year
/// 9999 (which RFC 3339 cannot write), the number itself.
pub fn rfc3339(secs: i64) -> String {
    const LAST_RFC3339_SECOND: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if secs > LAST_RFC3339_SECOND {
        return secs.to_string();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct P {
        #[serde(default, deserialize_with = "flex_seconds")]
        period: Option<i64>,
        #[serde(default, deserialize_with = "flex_int")]
        digits: Option<i64>,
    }

    #[test]
    fn codes_as_strings_or_numbers() {
        #[derive(Deserialize)]
        struct C {
            #[serde(deserialize_with = "flex_string")]
            token: String,
            #[serde(default, deserialize_with = "flex_string_opt")]
            other: Option<String>,
        }
        let c: C = serde_json::from_str(r#"{"token": 123456, "other": "a"}"#).unwrap();
        assert_eq!(
            (c.token.as_str(), c.other.as_deref()),
            ("123456", Some("a"))
        );
        let c: C = serde_json::from_str(r#"{"token": "0123", "other": null}"#).unwrap();
        assert_eq!((c.token.as_str(), c.other), ("0123", None));
        assert!(serde_json::from_str::<C>(r#"{"token": 1.5}"#).is_err());
        assert!(serde_json::from_str::<C>(r#"{"token": true}"#).is_err());
    }

    #[test]
    fn booleans_as_vault_clients_send_them() {
        #[derive(Deserialize)]
        struct B {
            #[serde(default, deserialize_with = "flex_bool")]
            b: Option<bool>,
        }
        let b = |j: &str| serde_json::from_str::<B>(j).map(|b| b.b);
        assert_eq!(b(r#"{"b": true}"#).unwrap(), Some(true));
        assert_eq!(b(r#"{"b": "false"}"#).unwrap(), Some(false));
        assert_eq!(b(r#"{"b": "1"}"#).unwrap(), Some(true));
        assert_eq!(b(r#"{}"#).unwrap(), None);
        assert!(b(r#"{"b": "yes"}"#).is_err());
        assert!(b(r#"{"b": 1}"#).is_err());
    }

    #[test]
    fn printable_text() {
        assert!(printable("GitHub: ci-bot (prod) ü ✓"));
        for bad in [
            "a\u{0}b",
            "tab\there",
            "evil\u{202E}txt",
            "x\u{2066}",
            "\u{7f}",
        ] {
            assert!(!printable(bad), "{bad:?}");
        }
    }

    #[test]
    fn times_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn lenient_vault_types() {
        let p: P = serde_json::from_str(r#"{"period": "1m", "digits": "8"}"#).unwrap();
        assert_eq!((p.period, p.digits), (Some(60), Some(8)));
        let p: P = serde_json::from_str(r#"{"period": 30}"#).unwrap();
        assert_eq!((p.period, p.digits), (Some(30), None));
        assert_eq!(parse_seconds("1h30m"), Some(5400));
        assert_eq!(parse_seconds("30s"), Some(30));
        assert_eq!(parse_seconds("thirty"), None);
        assert!(serde_json::from_str::<P>(r#"{"digits": "six"}"#).is_err());
        assert!(serde_json::from_str::<P>(r#"{"digits": true}"#).is_err());
        assert!(serde_json::from_str::<P>(r#"{"period": "500ms"}"#).is_err());
    }
}
