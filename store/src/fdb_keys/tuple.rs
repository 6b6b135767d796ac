//! The subset of FoundationDB's tuple encoding that palaver's keys and values use.
//!
//! The encoding is the one of FoundationDB's tuple layer (the `design/tuple.md` of the
//! FoundationDB repository), so `fdbcli` and every official binding can read palaver's keys:
//!
//! | element     | code        | body                                                        |
//! |-------------|-------------|-------------------------------------------------------------|
//! | null        | `0x00`      | none                                                        |
//! | byte string | `0x01`      | the bytes, each `0x00` written `0x00 0xff`, then `0x00`     |
//! | text        | `0x02`      | UTF-8 bytes, escaped and terminated like a byte string      |
//! | zero        | `0x14`      | none                                                        |
//! | integer > 0 | `0x14 + n`  | `n` (1–8) big-endian bytes, no leading zero byte            |
//! | false, true | `0x26 0x27` | none                                                        |
//!
//! The encoding preserves order: comparing two encoded tuples byte by byte gives the order of
//! the tuples element by element, integers compare numerically and a string sorts before every
//! string it is a proper prefix of (its terminator `0x00` is smaller than any other byte). That
//! is what lets a range read of `(…, user, after + 1)` to the end of `(…, user)` return one
//! user's log in cursor order without touching any other user's keys.
//!
//! Negative integers, floats, UUIDs, versionstamps and nested tuples are not needed and are
//! rejected when read, as an error value, never a panic.

use std::fmt;

const NULL: u8 = 0x00;
const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const INT_ZERO: u8 = 0x14;
const INT_POS_MAX: u8 = 0x1c;
const INT_NEG_MIN: u8 = 0x0c;
const FALSE: u8 = 0x26;
const TRUE: u8 = 0x27;
const ESCAPE: u8 = 0xff;

/// Why bytes could not be read as the expected tuple elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TupleError {
    #[error("tuple ends in the middle of an element at byte {0}")]
    Truncated(usize),
    #[error("expected {expected} at byte {at}, found type code {found:#04x}")]
    UnexpectedType { expected: &'static str, found: u8, at: usize },
    #[error("text element at byte {0} is not UTF-8")]
    InvalidUtf8(usize),
    #[error("negative integer at byte {0}; palaver stores none")]
    NegativeInteger(usize),
    #[error("{0} unread bytes after the last expected element")]
    TrailingBytes(usize),
    #[error("missing element: expected {0}")]
    Missing(&'static str),
}

/// Appends tuple elements to a byte buffer. Keys start from a subspace prefix, values from a
/// format byte (see the `values` module), so a writer can start from any bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TupleWriter(Vec<u8>);

impl TupleWriter {
    /// A writer that continues after `prefix` (a subspace prefix or a value's format byte).
    pub fn from_prefix(prefix: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(prefix.len() + 32);
        buf.extend_from_slice(prefix);
        TupleWriter(buf)
    }

    pub fn null(mut self) -> Self {
        self.0.push(NULL);
        self
    }

    pub fn str(mut self, text: &str) -> Self {
        self.0.push(STRING);
        push_escaped(&mut self.0, text.as_bytes());
        self
    }

    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.0.push(BYTES);
        push_escaped(&mut self.0, bytes);
        self
    }

    pub fn opt_str(self, text: Option<&str>) -> Self {
        match text {
            Some(text) => self.str(text),
            None => self.null(),
        }
    }

    /// Null or a non-negative integer.
    pub fn opt_uint(self, n: Option<u64>) -> Self {
        match n {
            Some(n) => self.uint(n),
            None => self.null(),
        }
    }

    pub fn uint(mut self, n: u64) -> Self {
        if n == 0 {
            self.0.push(INT_ZERO);
            return self;
        }
        let be = n.to_be_bytes();
        let skip = (n.leading_zeros() / 8) as usize;
        let len = be.len() - skip;
        // `len` is 1..=8, so the code stays within 0x15..=0x1c.
        self.0.push(INT_ZERO + len as u8);
        self.0.extend_from_slice(&be[skip..]);
        self
    }

    pub fn boolean(mut self, value: bool) -> Self {
        self.0.push(if value { TRUE } else { FALSE });
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TupleWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TupleWriter({})", printable(&self.0))
    }
}

fn push_escaped(buf: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        buf.push(b);
        if b == NULL {
            buf.push(ESCAPE);
        }
    }
    buf.push(NULL);
}

/// Reads tuple elements one at a time, each read naming the type it expects.
#[derive(Debug, Clone)]
pub struct TupleReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> TupleReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        TupleReader { buf, pos: 0 }
    }

    /// Whether every element has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Succeeds only if nothing is left: keys must match their layout exactly.
    pub fn finish(self) -> Result<(), TupleError> {
        match self.buf.len() - self.pos.min(self.buf.len()) {
            0 => Ok(()),
            left => Err(TupleError::TrailingBytes(left)),
        }
    }

    fn code(&self, expected: &'static str) -> Result<u8, TupleError> {
        self.buf.get(self.pos).copied().ok_or(TupleError::Missing(expected))
    }

    fn unexpected(&self, expected: &'static str, found: u8) -> TupleError {
        TupleError::UnexpectedType { expected, found, at: self.pos }
    }

    /// Reads an escaped, terminated body starting after the type code.
    fn escaped(&mut self) -> Result<Vec<u8>, TupleError> {
        let start = self.pos;
        let mut out = Vec::new();
        let mut i = self.pos + 1;
        loop {
            match self.buf.get(i) {
                None => return Err(TupleError::Truncated(start)),
                Some(&NULL) if self.buf.get(i + 1) == Some(&ESCAPE) => {
                    out.push(NULL);
                    i += 2;
                }
                Some(&NULL) => {
                    self.pos = i + 1;
                    return Ok(out);
                }
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }

    pub fn str(&mut self) -> Result<String, TupleError> {
        let code = self.code("text")?;
        if code != STRING {
            return Err(self.unexpected("text", code));
        }
        let at = self.pos;
        String::from_utf8(self.escaped()?).map_err(|_| TupleError::InvalidUtf8(at))
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, TupleError> {
        let code = self.code("bytes")?;
        if code != BYTES {
            return Err(self.unexpected("bytes", code));
        }
        self.escaped()
    }

    /// Null or text.
    pub fn opt_str(&mut self) -> Result<Option<String>, TupleError> {
        if self.code("text or null")? == NULL {
            self.pos += 1;
            return Ok(None);
        }
        self.str().map(Some)
    }

    /// Null or an integer.
    pub fn opt_uint(&mut self) -> Result<Option<u64>, TupleError> {
        if self.code("integer or null")? == NULL {
            self.pos += 1;
            return Ok(None);
        }
        self.uint().map(Some)
    }

    pub fn uint(&mut self) -> Result<u64, TupleError> {
        let code = self.code("integer")?;
        match code {
            INT_ZERO => {
                self.pos += 1;
                Ok(0)
            }
            c if c > INT_ZERO && c <= INT_POS_MAX => {
                let len = usize::from(c - INT_ZERO);
                let body = self.buf.get(self.pos + 1..self.pos + 1 + len).ok_or(TupleError::Truncated(self.pos))?;
                let mut be = [0u8; 8];
                be[8 - len..].copy_from_slice(body);
                self.pos += 1 + len;
                Ok(u64::from_be_bytes(be))
            }
            c if (INT_NEG_MIN..INT_ZERO).contains(&c) => Err(TupleError::NegativeInteger(self.pos)),
            c => Err(self.unexpected("integer", c)),
        }
    }

    /// An integer that must fit a `u32` (counts such as members).
    pub fn u32(&mut self) -> Result<u32, TupleError> {
        let at = self.pos;
        let n = self.uint()?;
        u32::try_from(n).map_err(|_| TupleError::UnexpectedType { expected: "integer below 2^32", found: 0x1c, at })
    }

    pub fn boolean(&mut self) -> Result<bool, TupleError> {
        match self.code("boolean")? {
            FALSE => {
                self.pos += 1;
                Ok(false)
            }
            TRUE => {
                self.pos += 1;
                Ok(true)
            }
            c => Err(self.unexpected("boolean", c)),
        }
    }

    /// An integer field added after format 1 was first written: absent in older values.
    pub fn uint_or(&mut self, default: u64) -> Result<u64, TupleError> {
        if self.is_empty() {
            Ok(default)
        } else {
            self.uint()
        }
    }
}

/// Bytes as `fdbcli` prints them: printable ASCII as is, everything else as `\xNN`.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' || b == b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> TupleWriter {
        TupleWriter::default()
    }

    /// Byte strings produced by FoundationDB's own tuple layer (the `foundationdb-tuple` crate
    /// 0.11, `pack(&(…))`), so palaver's keys stay readable by every FoundationDB tool.
    #[test]
    fn matches_the_reference_tuple_layer() {
        assert_eq!(w().str("hello").into_bytes(), b"\x02hello\x00");
        assert_eq!(w().str("a\0b").into_bytes(), b"\x02a\x00\xffb\x00");
        assert_eq!(w().str("").into_bytes(), b"\x02\x00");
        assert_eq!(w().bytes(b"\x00\xff").into_bytes(), b"\x01\x00\xff\xff\x00");
        assert_eq!(w().uint(0).into_bytes(), b"\x14");
        assert_eq!(w().uint(1).into_bytes(), b"\x15\x01");
        assert_eq!(w().uint(255).into_bytes(), b"\x15\xff");
        assert_eq!(w().uint(256).into_bytes(), b"\x16\x01\x00");
        assert_eq!(w().uint(65_536).into_bytes(), b"\x17\x01\x00\x00");
        assert_eq!(w().uint(u64::MAX).into_bytes(), b"\x1c\xff\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(w().null().into_bytes(), b"\x00");
        assert_eq!(w().boolean(false).boolean(true).into_bytes(), b"\x26\x27");
        assert_eq!(
            w().str("palaver").str("ulog").str("bob").uint(7).into_bytes(),
            b"\x02palaver\x00\x02ulog\x00\x02bob\x00\x15\x07"
        );
    }

    #[test]
    fn round_trips() {
        let bytes = w()
            .str("zoë\0")
            .bytes(b"\x00\x01")
            .uint(0)
            .uint(1 << 40)
            .null()
            .opt_str(Some("x"))
            .boolean(true)
            .opt_uint(None)
            .opt_uint(Some(7))
            .into_bytes();
        let mut r = TupleReader::new(&bytes);
        assert_eq!(r.str().unwrap(), "zoë\0");
        assert_eq!(r.bytes().unwrap(), b"\x00\x01");
        assert_eq!(r.uint().unwrap(), 0);
        assert_eq!(r.uint().unwrap(), 1 << 40);
        assert_eq!(r.opt_str().unwrap(), None);
        assert_eq!(r.opt_str().unwrap(), Some("x".to_string()));
        assert!(r.boolean().unwrap());
        assert_eq!(r.opt_uint().unwrap(), None);
        assert_eq!(r.opt_uint().unwrap(), Some(7));
        assert!(r.is_empty());
        r.finish().unwrap();
    }

    #[test]
    fn every_integer_width_round_trips_and_sorts_numerically() {
        let mut values: Vec<u64> = vec![0, 1, 2, 254, 255, 256, 257, 65_535, 65_536, u64::MAX - 1, u64::MAX];
        values.extend((0..64).map(|s| 1u64 << s));
        values.extend((1..64).map(|s| (1u64 << s) - 1));
        values.sort_unstable();
        values.dedup();
        let encoded: Vec<Vec<u8>> = values.iter().map(|&n| w().uint(n).into_bytes()).collect();
        for (n, bytes) in values.iter().zip(&encoded) {
            let mut r = TupleReader::new(bytes);
            assert_eq!(r.uint().unwrap(), *n);
            r.finish().unwrap();
        }
        assert!(encoded.windows(2).all(|p| p[0] < p[1]), "encoded integers must sort like the numbers");
    }

    #[test]
    fn strings_sort_like_tuples() {
        // A string sorts before every string it prefixes, whatever follows either of them.
        let a = w().str("bob").uint(u64::MAX).into_bytes();
        let b = w().str("bobby").uint(0).into_bytes();
        let c = w().str("bob\0").uint(0).into_bytes();
        assert!(a < c && c < b);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(TupleReader::new(b"\x02abc").str(), Err(TupleError::Truncated(0)));
        assert_eq!(TupleReader::new(b"\x17\x01").uint(), Err(TupleError::Truncated(0)));
        assert_eq!(TupleReader::new(b"\x13\xfe").uint(), Err(TupleError::NegativeInteger(0)));
        assert!(matches!(TupleReader::new(b"\x15\x01").str(), Err(TupleError::UnexpectedType { .. })));
        assert_eq!(TupleReader::new(b"\x02\xff\x00").str(), Err(TupleError::InvalidUtf8(0)));
        assert_eq!(TupleReader::new(b"").uint(), Err(TupleError::Missing("integer")));
        assert!(matches!(TupleReader::new(b"\x1d\x09").uint(), Err(TupleError::UnexpectedType { .. })));
        assert_eq!(TupleReader::new(b"\x15\x01\x14").finish(), Err(TupleError::TrailingBytes(3)));
        let mut r = TupleReader::new(b"\x1c\x00\x00\x00\x01\x00\x00\x00\x00");
        assert!(r.u32().is_err());
        // Arbitrary bytes never panic.
        for seed in 0u32..2000 {
            let bytes: Vec<u8> =
                (0..(seed % 13)).map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i) >> 3) as u8).collect();
            let mut r = TupleReader::new(&bytes);
            let _ = (r.opt_str(), r.uint(), r.bytes(), r.boolean(), r.u32());
        }
    }

    #[test]
    fn printable_escapes_like_fdbcli() {
        assert_eq!(printable(b"\x02ab\x00\\"), "\\x02ab\\x00\\x5c");
    }
}
