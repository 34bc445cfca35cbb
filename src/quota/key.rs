//! What a quota is kept per: nothing (the whole route), the client address, or a header.
//!
//! The engines see a request's key as bytes borrowed from the request. The rate engine
//! keeps only a fingerprint of them; a [`Key`] (owned) is made where a key is held whole.

use std::hash::{Hash, Hasher};

/// How a quota finds the key of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySpec {
    None,
    ClientIp,
    /// Lower-case header name. A request without it (or with an empty value) is counted
    /// under the empty key, which all such requests share: leaving the header out never
    /// escapes the quota.
    Header(http::HeaderName),
}

impl KeySpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "client_ip" => Ok(Self::ClientIp),
            _ => match text.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(Self::Header)
                    .map_err(|_| format!("`{name}` is not a valid header name")),
                None => Err(format!("`{text}` is not a key: use none, client_ip or header:NAME")),
            },
        }
    }

    pub fn is_keyed(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// A key of this kind as text: a client address as an address (its key is the
    /// address's octets), a header's value as it came (lossily, where it is not UTF-8).
    pub fn show(&self, key: &[u8]) -> String {
        let ip = match (self, key.len()) {
            (Self::ClientIp, 4) => <[u8; 4]>::try_from(key).ok().map(std::net::IpAddr::from),
            (Self::ClientIp, 16) => <[u8; 16]>::try_from(key).ok().map(std::net::IpAddr::from),
            _ => None,
        };
        ip.map_or_else(|| String::from_utf8_lossy(key).into_owned(), |ip| ip.to_string())
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::ClientIp => f.write_str("client_ip"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// A key held whole: in the concurrency table and the offenders' list. Up to [`INLINE`]
/// bytes are stored in place, so a table entry (key + a count) is 32 bytes, two to a cache
/// line; longer keys go to the heap.
#[derive(Clone)]
pub enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

/// Keys up to this long are stored in place.
pub const INLINE: usize = 22;

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Self::Inline { len: bytes.len() as u8, bytes: inline }
        } else {
            Self::Heap(bytes.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..*len as usize],
            Self::Heap(bytes) => bytes,
        }
    }
}

/// A key is its bytes: hashed and compared exactly as `[u8]` is, inline or not.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

/// So a table of keys is looked up by a request's bytes, with no key made.
impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn keys_show_as_text_a_client_address_as_an_address() {
        assert_eq!(KeySpec::ClientIp.show(&[127, 0, 0, 1]), "127.0.0.1");
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(KeySpec::ClientIp.show(&v6.octets()), "2001:db8::1");
        let header = KeySpec::parse("header:x-consumer-id").unwrap();
        assert_eq!(header.show(b"acme"), "acme");
        assert_eq!(header.show(&[0x61, 0xff]), "a\u{fffd}");
    }

    #[test]
    fn parse_round_trips() {
        for text in ["none", "client_ip", "header:x-consumer-id"] {
            assert_eq!(KeySpec::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(KeySpec::parse("header:X-Consumer-Id").unwrap().to_string(), "header:x-consumer-id");
        assert!(KeySpec::parse("header:bad name").is_err());
        assert!(KeySpec::parse("cookie:x").is_err());
    }

    #[test]
    fn a_key_is_its_bytes_inline_or_not() {
        let hasher = foldhash::fast::RandomState::default();
        for len in [0, 1, INLINE, INLINE + 1, 100] {
            let bytes: Vec<u8> = (0..len as u8).collect();
            let key = Key::new(&bytes);
            assert_eq!(matches!(key, Key::Inline { .. }), len <= INLINE);
            assert_eq!(key.as_bytes(), &bytes[..]);
            // inline or on the heap, a key hashes as its bytes do
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&bytes[..]));
        }
        assert_eq!(Key::new(b"abc"), Key::new(b"abc"));
        assert_ne!(Key::new(b"abc"), Key::new(b"abc\0"));
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }
}
