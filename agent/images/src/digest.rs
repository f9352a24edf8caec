//! Content digests (`sha256:<hex>`): parsing, and readers/writers that hash what flows
//! through them so every blob and every uncompressed layer is verified as it streams.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A verified-form content digest. Only `sha256` is supported, as in every registry
/// and image tool in use today.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64 lowercase hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Builds a digest from the hex part alone (as used in `blobs/sha256/<hex>`).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError(format!("sha256:{hex}")));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// Short form for people: the first 12 hex characters.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

/// A string that is not a valid `sha256:<64 hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestError(pub String);

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid digest {:?}: expected sha256:<64 lowercase hex characters>",
            self.0
        )
    }
}

impl std::error::Error for DigestError {}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(hex) => Digest::from_hex(hex).map_err(|_| DigestError(s.to_string())),
            None => Err(DigestError(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    /// Starts an empty hash.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was hashed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.sha.finalize()),
        }
    }
}

/// A reader that hashes every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Reads and hashes whatever is left, then returns the digest and total length.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`, continuing from `hasher` (for resumed downloads).
    pub fn with_hasher(inner: W, hasher: Hasher) -> Self {
        HashingWriter { inner, hasher }
    }

    /// Bytes written so far (including any the hasher started with).
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Returns the writer and the hash state.
    pub fn into_parts(self) -> (W, Hasher) {
        (self.inner, self.hasher)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.short(), "e3b0c44298fc");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert!(err.to_string().contains("invalid digest"), "{bad}");
        }
    }

    #[test]
    fn hashing_reader_matches_digest_of() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        let (d, len) = r.finish().unwrap();
        assert_eq!(len, 100_000);
        assert_eq!(d, Digest::of(&data));
    }

    #[test]
    fn hashing_writer_can_continue_a_hash() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        let mut w = HashingWriter::with_hasher(Vec::new(), h);
        w.write_all(b"world").unwrap();
        let (buf, h) = w.into_parts();
        assert_eq!(buf, b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
