//! FoundationDB's tuple encoding, as palaver's keys and values use it.
//!
//! The encoding itself comes from the `foundationdb-tuple` crate, the one the official Rust
//! binding uses, so `fdbcli` and every binding read palaver's keys, and palaver carries no
//! encoder of its own. This module adds what the store needs around it: a builder that appends
//! one element at a time after a subspace prefix or a value's format byte, and a reader that
//! takes one element at a time, each read naming the type it expects, with errors that say
//! where a key or value went wrong.
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

use foundationdb_tuple::{PackError, PackResult, TupleDepth, TuplePack, TupleUnpack};

// The type codes a read checks before the crate decodes the element.
const NULL: u8 = 0x00;
const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const INT_NEG_MIN: u8 = 0x0c;
const INT_ZERO: u8 = 0x14;
const INT_POS_MAX: u8 = 0x1c;
const FALSE: u8 = 0x26;
const TRUE: u8 = 0x27;

/// Zero or a positive integer of one to eight bytes: the only integers palaver writes. The
/// crate would also take the longer form `0x1d`, which no `u64` needs.
fn is_uint(code: u8) -> bool {
    (INT_ZERO..=INT_POS_MAX).contains(&code)
}

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

    /// One element, encoded as a top-level element of a tuple.
    fn element(mut self, value: impl TuplePack) -> Self {
        value.pack_into_vec(&mut self.0);
        self
    }

    pub fn null(self) -> Self {
        self.element(Option::<()>::None)
    }

    pub fn str(self, text: &str) -> Self {
        self.element(text)
    }

    pub fn bytes(self, bytes: &[u8]) -> Self {
        self.element(bytes)
    }

    pub fn opt_str(self, text: Option<&str>) -> Self {
        self.element(text)
    }

    /// Null or a non-negative integer.
    pub fn opt_uint(self, n: Option<u64>) -> Self {
        self.element(n)
    }

    pub fn uint(self, n: u64) -> Self {
        self.element(n)
    }

    pub fn boolean(self, value: bool) -> Self {
        self.element(value)
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

    /// The next element as a `T`, if its type code is one `accepts`; otherwise the error naming
    /// what was `expected` and where. Checking the code first reports a wrong type the same way
    /// whatever `T` is, and keeps the crate from reading forms palaver never writes.
    fn element<T: TupleUnpack<'a>>(
        &mut self,
        expected: &'static str,
        accepts: fn(u8) -> bool,
    ) -> Result<T, TupleError> {
        let at = self.pos;
        let rest = self.buf.get(at..).unwrap_or_default();
        let found = *rest.first().ok_or(TupleError::Missing(expected))?;
        if !accepts(found) {
            return Err(if accepts(INT_ZERO) && (INT_NEG_MIN..INT_ZERO).contains(&found) {
                TupleError::NegativeInteger(at)
            } else {
                TupleError::UnexpectedType { expected, found, at }
            });
        }
        let First(value, left) = foundationdb_tuple::unpack(rest).map_err(|error| match error {
            PackError::BadStringFormat => TupleError::InvalidUtf8(at),
            PackError::BadCode { found, .. } => TupleError::UnexpectedType { expected, found, at },
            _ => TupleError::Truncated(at),
        })?;
        self.pos = self.buf.len() - left.len();
        Ok(value)
    }

    pub fn str(&mut self) -> Result<String, TupleError> {
        self.element("text", |code| code == STRING)
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, TupleError> {
        self.element("bytes", |code| code == BYTES)
    }

    /// Null or text.
    pub fn opt_str(&mut self) -> Result<Option<String>, TupleError> {
        self.element("text or null", |code| code == NULL || code == STRING)
    }

    /// Null or an integer.
    pub fn opt_uint(&mut self) -> Result<Option<u64>, TupleError> {
        self.element("integer or null", |code| code == NULL || is_uint(code))
    }

    pub fn uint(&mut self) -> Result<u64, TupleError> {
        self.element("integer", is_uint)
    }

    /// An integer that must fit a `u32` (counts such as members).
    pub fn u32(&mut self) -> Result<u32, TupleError> {
        let at = self.pos;
        let n = self.uint()?;
        u32::try_from(n).map_err(|_| TupleError::UnexpectedType { expected: "integer below 2^32", found: 0x1c, at })
    }

    pub fn boolean(&mut self) -> Result<bool, TupleError> {
        self.element("boolean", |code| code == FALSE || code == TRUE)
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

/// The first element of some bytes, and the bytes after it. The crate decodes whole tuples
/// from the top (`unpack`) or single elements at a depth only it can make, so this is how a
/// reader takes one top-level element at a time.
struct First<'a, T>(T, &'a [u8]);

impl<'a, T: TupleUnpack<'a>> TupleUnpack<'a> for First<'a, T> {
    fn unpack(input: &'a [u8], depth: TupleDepth) -> PackResult<(&'a [u8], Self)> {
        let (left, value) = T::unpack(input, depth)?;
        Ok((&[], First(value, left)))
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

    /// The exact bytes palaver's keys and values have always had, written by the tuple layer's
    /// specification: a version of the crate that wrote anything else would make the data in
    /// existing databases unreadable.
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
