//! What a quota is kept per: nothing (the whole route), the client address, or a header.

use std::net::IpAddr;

/// How a quota finds the key of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySpec {
    None,
    ClientIp,
    /// Lower-case header name. A request without it uses [`Key::Absent`].
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

/// The key of one request. Requests without the header share the one `Absent` bucket,
/// so leaving the header out never escapes the quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Absent,
    Ip(IpAddr),
    /// A header value of up to [`INLINE`] bytes, stored in place: no allocation on the
    /// request path, and one cache miss less in the quota table. Unused bytes are zero.
    Short {
        len: u8,
        bytes: [u8; INLINE],
    },
    Long(Box<[u8]>),
}

/// Header values up to this long are keys without an allocation.
pub const INLINE: usize = 30;

/// One `write` per key: the value's bytes, not the padding (what the derive would hash).
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::Absent => state.write_u8(0),
            Self::Ip(ip) => ip.hash(state),
            Self::Short { len, bytes } => state.write(&bytes[..*len as usize]),
            Self::Long(bytes) => state.write(bytes),
        }
    }
}

impl Key {
    pub fn value(value: &[u8]) -> Self {
        if value.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..value.len()].copy_from_slice(value);
            Self::Short { len: value.len() as u8, bytes }
        } else {
            Self::Long(value.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn short_and_long_values_are_distinct_keys() {
        assert_eq!(Key::value(b"abc"), Key::value(b"abc"));
        assert_ne!(Key::value(b"abc"), Key::value(b"abc\0"));
        assert_ne!(Key::value(b"abc"), Key::value(b"abd"));
        let long = [b'x'; 31];
        assert!(matches!(Key::value(&long), Key::Long(_)));
        assert_eq!(Key::value(&long), Key::value(&long));
    }
}
