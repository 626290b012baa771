//! A minimal JSON object writer for `--json` output (flat objects of strings, numbers, booleans).

use std::fmt::Write;

/// Builds one JSON object on one line.
#[derive(Debug, Default)]
pub struct Object {
    out: String,
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Object::default()
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        push_str(&mut self.out, key);
        self.out.push(':');
    }

    /// Adds a string member.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_str(&mut self.out, value);
        self
    }

    /// Adds a string member, or `null`.
    pub fn opt(mut self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.str(key, &v.to_string()),
            None => {
                self.key(key);
                self.out.push_str("null");
                self
            }
        }
    }

    /// Adds a number member.
    pub fn num(mut self, key: &str, value: impl Into<f64>) -> Self {
        self.key(key);
        let v: f64 = value.into();
        if v.is_finite() {
            let _ = write!(self.out, "{v}");
        } else {
            self.out.push_str("null");
        }
        self
    }

    /// Adds an unsigned integer member, exactly (no detour through `f64`).
    pub fn uint(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// Adds a boolean member.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    /// The finished object.
    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::Object;

    #[test]
    fn escapes_and_nulls() {
        let s = Object::new()
            .str("a", "x\"y\n")
            .opt("b", None::<u8>)
            .num("c", 1.5)
            .bool("d", true)
            .uint("e", u64::MAX)
            .finish();
        assert_eq!(
            s,
            r#"{"a":"x\"y\n","b":null,"c":1.5,"d":true,"e":18446744073709551615}"#
        );
        assert_eq!(Object::new().finish(), "{}");
    }
}
