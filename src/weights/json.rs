//! A strict reader of the JSON a safetensors header holds, so the header can be
//! checked before any tensor data is read (the `safetensors` crate parses a
//! header only together with the whole file's bytes). Objects keep their key order
//! and refuse duplicate keys; numbers stay text until the caller asks for an
//! integer; nesting is limited, so a hostile header cannot overflow the stack.

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, in the order written.
    Object(Vec<(String, Json)>),
}

/// Deeper nesting than any safetensors header has (it needs three levels).
const MAX_DEPTH: usize = 32;

impl Json {
    /// The value as a non-negative integer, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) if n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok(),
            _ => None,
        }
    }

    /// The string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses `text` (one value, whitespace around it allowed).
pub fn parse(text: &str) -> Result<Json, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the JSON value at byte {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| b" \t\r\n".contains(b)) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        let ok = self.s[self.i..].starts_with(lit);
        if ok {
            self.i += lit.len();
        }
        ok
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => Ok(self.number()),
            _ if self.eat(b"true") => Ok(Json::Bool(true)),
            _ if self.eat(b"false") => Ok(Json::Bool(false)),
            _ if self.eat(b"null") => Ok(Json::Null),
            _ => self.err("expected a JSON value"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, String> {
        self.i += 1;
        let mut fields: Vec<(String, Json)> = Vec::new();
        self.ws();
        if self.eat(b"}") {
            return Ok(Json::Object(fields));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return self.err("expected a key");
            }
            let key = self.string()?;
            if fields.iter().any(|(k, _)| *k == key) {
                return self.err(&format!("key `{key}` appears twice"));
            }
            self.ws();
            if !self.eat(b":") {
                return self.err("expected `:`");
            }
            fields.push((key, self.value(depth + 1)?));
            self.ws();
            if self.eat(b"}") {
                return Ok(Json::Object(fields));
            }
            if !self.eat(b",") {
                return self.err("expected `,` or `}`");
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b"]") {
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(b"]") {
                return Ok(Json::Array(items));
            }
            if !self.eat(b",") {
                return self.err("expected `,` or `]`");
            }
        }
    }

    fn number(&mut self) -> Json {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|b| b"+-.eE0123456789".contains(b)) {
            self.i += 1;
        }
        Json::Number(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.s.get(self.i).is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20) {
                self.i += 1;
            }
            // The input is a &str, so a run of non-special bytes is valid UTF-8.
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.s.get(self.i) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let c = self.unicode_escape()?;
                            out.push(c);
                            continue;
                        }
                        _ => return self.err("bad escape in a string"),
                    };
                    self.i += 1;
                    out.push(c);
                }
                _ => return self.err("unterminated string"),
            }
        }
    }

    /// `\uXXXX` (the `i` is at the `u`), with surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let hex = |p: &mut Self| -> Result<u32, String> {
            let digits = p.s.get(p.i + 1..p.i + 5).ok_or("short \\u escape")?;
            let v = u32::from_str_radix(std::str::from_utf8(digits).map_err(|e| e.to_string())?, 16)
                .map_err(|_| "bad \\u escape".to_string())?;
            p.i += 5;
            Ok(v)
        };
        let hi = hex(self)?;
        let code = if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
            self.i += 1;
            let lo = hex(self)?;
            0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| "a \\u escape that is not a character".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_safetensors_headers_and_refuses_the_rest() {
        let h = r#" {"a\u00e9\"":{"dtype":"F32","shape":[2, 3],"data_offsets":[0,24]},"__metadata__":{"k":"v\n"}} "#;
        let Json::Object(fields) = parse(h).unwrap() else { panic!() };
        assert_eq!(fields[0].0, "aé\"");
        let Json::Object(t) = &fields[0].1 else { panic!() };
        assert_eq!(t[1].1, Json::Array(vec![Json::Number("2".into()), Json::Number("3".into())]));
        assert_eq!(t[2].1, Json::Array(vec![Json::Number("0".into()), Json::Number("24".into())]));
        assert_eq!(parse(r#""\ud83d\ude00""#).unwrap(), Json::Str("😀".into()));
        assert_eq!(Json::Number("-1".into()).as_u64(), None);
        for bad in ["", "{", r#"{"a":1,"a":2}"#, "[1,]", "{} x", r#""\q""#, &"[".repeat(100_000)] {
            assert!(parse(bad).is_err(), "{bad:.20}");
        }
    }
}
