//! Validators shared by the WebSocket and the REST API: `data`, `ttlMs`, `intervalMs`
//! and `ref`. Room names are checked by [`Limits::check_room`].

use serde_json::value::RawValue;

use crate::limits::{MAX_INTERVAL_MS, MAX_SAFE_INTEGER, MAX_SAMPLE_LIMIT};
use crate::{ErrorCode, Limits, Rejection};

/// Validates a heartbeat's `data` (syntactically valid JSON text, as serde parsed it):
/// at most `max_data_bytes`, and only what every RFC 8259 parser reads the same way:
/// no lone surrogate escapes, every number within the range of a double, and arrays
/// and objects nested at most `max_data_depth` deep.
///
/// ```
/// use rollcall_protocol::{ErrorCode, Limits, check_data};
///
/// let limits = Limits::default();
/// assert!(check_data(r#"{"status":"online"}"#, &limits).is_ok());
/// let refused = check_data(r#""\ud800""#, &limits).unwrap_err();
/// assert_eq!(refused.code, ErrorCode::InvalidData);
/// ```
pub fn check_data(data: &str, limits: &Limits) -> Result<(), Rejection> {
    if data.len() > limits.max_data_bytes {
        return Err(Rejection::new(
            ErrorCode::DataTooLarge,
            format!(
                "data is {} bytes of JSON; the limit is {}",
                data.len(),
                limits.max_data_bytes
            ),
        ));
    }
    let invalid = |message: String| Rejection::new(ErrorCode::InvalidData, message);
    let bytes = data.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_data_depth {
                    return Err(invalid(format!(
                        "data is nested more than {} levels deep",
                        limits.max_data_depth
                    )));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = check_string(bytes, i + 1).map_err(invalid)?,
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(bytes.len(), |n| i + n);
                let number = &data[i..end];
                if !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(invalid(format!(
                        "the number {} is out of the range of a double",
                        truncate(number)
                    )));
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Checks the escapes of the string whose contents start at `start`; returns the index
/// after its closing quote.
fn check_string(bytes: &[u8], start: usize) -> Result<usize, String> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex(i + 2).unwrap_or(0);
                i += 6;
                if (0xDC00..=0xDFFF).contains(&unit) {
                    return Err(format!("data holds a lone surrogate \\u{unit:04x}"));
                }
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u'))
                        .then(|| hex(i + 2))
                        .flatten();
                    if !low.is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                        return Err(format!("data holds a lone surrogate \\u{unit:04x}"));
                    }
                    i += 6;
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// At most 32 characters of `text`, for error messages.
fn truncate(text: &str) -> &str {
    text.char_indices()
        .nth(32)
        .map_or(text, |(at, _)| &text[..at])
}

/// Validates `intervalMs` of `subscribe`: absent (zero) or an integer in
/// `[0, MAX_INTERVAL_MS]`.
pub fn parse_interval(raw: Option<&RawValue>) -> Result<u64, Rejection> {
    let Some(value) = raw else {
        return Ok(0);
    };
    value
        .get()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms <= MAX_INTERVAL_MS)
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::BadRequest,
                format!("intervalMs must be an integer in [0, {MAX_INTERVAL_MS}]"),
            )
        })
}

/// Validates `limit` of a `sample` subscription: required, an integer in
/// `[1, MAX_SAMPLE_LIMIT]`.
///
/// ```
/// use rollcall_protocol::{ErrorCode, parse_sample_limit};
/// use serde_json::value::RawValue;
///
/// let twenty = RawValue::from_string("20".into())?;
/// assert_eq!(parse_sample_limit(Some(&twenty)), Ok(20));
/// assert_eq!(parse_sample_limit(None).unwrap_err().code, ErrorCode::BadRequest);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn parse_sample_limit(raw: Option<&RawValue>) -> Result<u64, Rejection> {
    raw.and_then(|value| value.get().parse::<u64>().ok())
        .filter(|n| (1..=MAX_SAMPLE_LIMIT).contains(n))
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::BadRequest,
                format!("mode \"sample\" needs a limit: an integer in [1, {MAX_SAMPLE_LIMIT}]"),
            )
        })
}

/// Validates `ttlMs`: an integer literal in `[1, max_ttl_ms]` (`1.5`, `1e3`, `-1`,
/// strings and `null` are refused).
pub fn parse_ttl(raw: Option<&RawValue>, limits: &Limits) -> Result<u64, Rejection> {
    let invalid = || {
        Rejection::new(
            ErrorCode::InvalidTtl,
            format!("ttlMs must be an integer in [1, {}]", limits.max_ttl_ms),
        )
    };
    let ttl: u64 = raw
        .ok_or_else(invalid)?
        .get()
        .parse()
        .map_err(|_| invalid())?;
    if ttl == 0 || ttl > limits.max_ttl_ms {
        return Err(invalid());
    }
    Ok(ttl)
}

/// Validates `ref`: absent, or an integer in `[0, 2^53)`.
pub fn parse_ref(raw: Option<&RawValue>) -> Result<Option<u64>, Rejection> {
    let Some(value) = raw else {
        return Ok(None);
    };
    value
        .get()
        .parse::<u64>()
        .ok()
        .filter(|r| *r <= MAX_SAFE_INTEGER)
        .map(Some)
        .ok_or_else(|| Rejection::new(ErrorCode::BadRequest, "ref must be an integer in [0, 2^53)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    #[test]
    fn data_size_is_checked() {
        let limits = Limits::default();
        let big = format!(r#""{}""#, "a".repeat(4095));
        assert_eq!(
            check_data(&big, &limits).expect_err("too big").code,
            ErrorCode::DataTooLarge
        );
        let fits = format!(r#""{}""#, "a".repeat(4094));
        assert!(check_data(&fits, &limits).is_ok());
    }

    #[test]
    fn data_every_parser_reads_alike_is_accepted() {
        let limits = Limits::default();
        for data in [
            r#"{"name":"a\"b\\","n":[1,-2.5e10,0.0,1e308],"s":"\ud83d\ude00 ok"}"#,
            r#""\u00e9\n""#,
            "null",
            "-0",
            "[[[[1]]]]",
            r#""[[[[[""#,
        ] {
            assert!(check_data(data, &limits).is_ok(), "{data}");
        }
        let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_data(&deep, &limits).is_ok());
    }

    #[test]
    fn data_parsers_disagree_on_is_invalid() {
        let limits = Limits::default();
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let huge = format!("1{}", "0".repeat(400));
        for data in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#"{"a":"x\uD800"}"#,
            "1e999999",
            "-1e400",
            &huge,
            &deep,
        ] {
            let rejection = check_data(data, &limits).expect_err(data);
            assert_eq!(rejection.code, ErrorCode::InvalidData, "{data}");
        }
    }

    #[test]
    fn ttl_must_be_an_integer_in_range() {
        let limits = Limits::default();
        for ttl in [
            "0",
            "-1",
            "1e300",
            "1.5",
            "3600001",
            "\"30\"",
            "null",
            "18446744073709551616",
        ] {
            let rejection = parse_ttl(Some(&raw(ttl)), &limits).expect_err(ttl);
            assert_eq!(rejection.code, ErrorCode::InvalidTtl, "{ttl}");
        }
        assert_eq!(
            parse_ttl(None, &limits).expect_err("missing").code,
            ErrorCode::InvalidTtl
        );
        assert_eq!(parse_ttl(Some(&raw("3600000")), &limits), Ok(3_600_000));
        assert_eq!(parse_ttl(Some(&raw("1")), &limits), Ok(1));
    }

    #[test]
    fn sample_limit_is_required_and_bounded() {
        assert_eq!(parse_sample_limit(Some(&raw("1"))), Ok(1));
        assert_eq!(parse_sample_limit(Some(&raw("1000"))), Ok(MAX_SAMPLE_LIMIT));
        assert_eq!(
            parse_sample_limit(None).expect_err("missing").code,
            ErrorCode::BadRequest
        );
        for bad in [
            "0",
            "-1",
            "1001",
            "2.5",
            "\"5\"",
            "null",
            "18446744073709551616",
        ] {
            assert_eq!(
                parse_sample_limit(Some(&raw(bad))).expect_err(bad).code,
                ErrorCode::BadRequest
            );
        }
    }

    #[test]
    fn interval_and_ref_ranges() {
        assert_eq!(parse_interval(None), Ok(0));
        assert_eq!(parse_interval(Some(&raw("60000"))), Ok(60_000));
        for bad in ["-1", "1.5", "\"50\"", "60001"] {
            assert_eq!(
                parse_interval(Some(&raw(bad))).expect_err(bad).code,
                ErrorCode::BadRequest
            );
        }
        assert_eq!(parse_ref(None), Ok(None));
        assert_eq!(
            parse_ref(Some(&raw("9007199254740991"))),
            Ok(Some(MAX_SAFE_INTEGER))
        );
        for bad in ["9007199254740992", "-1", "1.5", "\"1\""] {
            assert_eq!(
                parse_ref(Some(&raw(bad))).expect_err(bad).code,
                ErrorCode::BadRequest
            );
        }
    }
}
