//! JSON bodies, written by `serde_json` in the spacing tollgate's bodies have always had:
//! `{"success": false, "error": "..."}`, a space after every `:` and `,` and none elsewhere.
//!
//! Keeping those bytes means no client that compared bodies as text breaks, and every body the
//! layer writes, its own or a responder's, reads the same.

use std::{fmt, io};

use bytes::Bytes;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use serde_json::ser::Formatter;

/// `serde_json`'s compact output with a space after each `:` and `,`.
struct Spaced;

impl Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// `value` as a JSON body. Fails only for values JSON cannot hold (a map with non-string keys)
/// or whose `Serialize` implementation fails.
pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    value.serialize(&mut serializer)?;
    Ok(Bytes::from(out))
}

/// The body of every answer tollgate writes itself: `{"success": false, "error": "..."}`.
///
/// The message is anything `Display`, written (and escaped) straight into the body, with no
/// string in between.
pub(crate) struct Failure<'a> {
    error: &'a dyn fmt::Display,
}

impl<'a> Failure<'a> {
    pub(crate) fn new(error: &'a dyn fmt::Display) -> Self {
        Self { error }
    }

    /// As bytes; a bool and a string always serialize.
    pub(crate) fn to_bytes(&self) -> Bytes {
        to_bytes(self).unwrap_or_default()
    }
}

impl Serialize for Failure<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_struct("Failure", 2)?;
        body.serialize_field("success", &false)?;
        body.serialize_field("error", &Text(self.error))?;
        body.end()
    }
}

/// A `Display` value as a JSON string.
struct Text<'a>(&'a dyn fmt::Display);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// A failure body whose message ends with a number that changes per request (the seconds to
/// wait), serialized once by `serde_json` around a marker; per request the number's digits,
/// which JSON never escapes, are spliced in. A flood of denials escapes nothing and allocates
/// one buffer each.
pub(crate) struct FailureTemplate {
    before: Box<[u8]>,
    after: Box<[u8]>,
}

impl FailureTemplate {
    /// `{"success": false, "error": "<head><number><tail>"}`.
    pub(crate) fn new(head: &str, tail: &str) -> Self {
        // A NUL is escaped as this, and neither `head` nor `tail` holds one in tollgate.
        const MARK: &[u8] = b"\\u0000";
        let whole = Failure::new(&format_args!("{head}\0{tail}")).to_bytes();
        let at = whole.windows(MARK.len()).position(|w| w == MARK);
        let (before, after) = match at {
            Some(at) => (&whole[..at], &whole[at + MARK.len()..]),
            None => (&whole[..], &b""[..]),
        };
        Self {
            before: before.into(),
            after: after.into(),
        }
    }

    /// The body with `n` in its place, in a buffer of the exact size (so that `Bytes` takes it
    /// over without allocating again).
    pub(crate) fn with(&self, n: u64) -> Bytes {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        let mut out = Vec::with_capacity(self.before.len() + digits.len() + self.after.len());
        out.extend_from_slice(&self.before);
        out.extend_from_slice(digits);
        out.extend_from_slice(&self.after);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_the_body_serde_writes() {
        let template = FailureTemplate::new("Retry \"now\" after ", ".");
        for n in [0, 7, 42, u64::MAX] {
            let message = format!("Retry \"now\" after {n}.");
            assert_eq!(template.with(n), Failure::new(&message).to_bytes());
        }
    }

    #[test]
    fn spacing_is_the_historical_one() {
        assert_eq!(
            Failure::new(&"say \"hi\"\n").to_bytes(),
            &br#"{"success": false, "error": "say \"hi\"\n"}"#[..]
        );
        let nested = serde_json::json!({"a": [1, 2, {"b": null}], "c": {}, "d": []});
        assert_eq!(
            to_bytes(&nested).unwrap(),
            &br#"{"a": [1, 2, {"b": null}], "c": {}, "d": []}"#[..]
        );
    }
}
