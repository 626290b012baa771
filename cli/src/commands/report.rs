//! Output of the sub-commands: a line of text for people, or one JSON object per line (`--json`)
//! from a `#[derive(Serialize)]` report struct, for scripts.

use crate::{errln, outln};
use std::fmt::Display;

use serde::{Serialize, Serializer};

/// Prints each piece of output either as text or as one JSON object on one line.
#[derive(Copy, Clone, Debug)]
pub struct Reporter {
    /// `--json`: objects instead of text.
    pub json: bool,
}

impl Reporter {
    /// A line of output on stdout: `human`, or `json` as one JSON object.
    pub fn line(&self, human: impl Display, json: &impl Serialize) {
        if self.json {
            outln!("{}", to_json(json));
        } else {
            outln!("{human}");
        }
    }

    /// A failure or a note beside the main output: `human` on stderr, or `json` as one JSON
    /// object on stdout (where scripts read the rest of the output).
    pub fn note(&self, human: impl Display, json: &impl Serialize) {
        if self.json {
            outln!("{}", to_json(json));
        } else {
            errln!("{human}");
        }
    }

    /// A status line on stderr, text or JSON (for commands whose stdout carries data).
    pub fn status(&self, human: impl Display, json: &impl Serialize) {
        if self.json {
            errln!("{}", to_json(json));
        } else {
            errln!("{human}");
        }
    }
}

/// `value` as one line of JSON.
pub fn to_json(value: &impl Serialize) -> String {
    // Report structs are plain data (string keys, no failing Serialize impls), so this cannot fail;
    // should it, the line says so instead of vanishing.
    serde_json::to_string(value).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot encode JSON: {e}") }).to_string()
    })
}

/// A number in JSON as the CLI has always printed it: integral values without a fraction (`1`,
/// not `1.0`), others in the shortest form that reads back the same (`0.48`), and `null` for NaN
/// and the infinities.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if !v.is_finite() {
            s.serialize_none()
        } else if v.fract() == 0.0 && v.abs() < 9.0e18 {
            // Exact: |v| < 2^63 and integral.
            s.serialize_i64(v as i64)
        } else {
            s.serialize_f64(v)
        }
    }
}

/// Serializes a field with its `Display` text (`#[serde(serialize_with = "display")]`).
pub fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Serializes an optional field with its `Display` text, or `null`.
pub fn display_opt<T: Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// `{"error": "..."}`: the error line of commands whose JSON has no other error fields.
#[derive(Debug, Serialize)]
pub struct ErrorLine<'a> {
    /// What went wrong.
    pub error: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample<'a> {
        a: &'a str,
        b: Option<u8>,
        c: Num,
        d: bool,
        e: u64,
        f: Num,
        g: Num,
        #[serde(serialize_with = "display_opt")]
        h: Option<std::net::SocketAddr>,
    }

    #[test]
    fn escapes_numbers_and_nulls() {
        let s = to_json(&Sample {
            a: "x\"y\n",
            b: None,
            c: Num(1.5),
            d: true,
            e: u64::MAX,
            f: Num(1.0),
            g: Num(f64::NAN),
            h: None,
        });
        assert_eq!(
            s,
            r#"{"a":"x\"y\n","b":null,"c":1.5,"d":true,"e":18446744073709551615,"f":1,"g":null,"h":null}"#
        );
        assert_eq!(to_json(&Num(0.48)), "0.48");
        assert_eq!(to_json(&Num(-3.0)), "-3");
        assert_eq!(to_json(&Num(3000.065662)), "3000.065662");
    }
}
