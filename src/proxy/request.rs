//! A request as [`super::Proxy`] takes it, from either protocol: HTTP/1.1 read by sluice
//! (its fields the bytes they came as) or h2c read by hyper (its fields a map).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::h1;
use super::RequestBody;

pub struct ProxyRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub fields: RequestFields,
    pub body: RequestBody,
    /// It asks to switch protocols (HTTP/1.1 only; see [`h1::RequestHead::upgrade`]).
    pub upgrade: bool,
}

pub enum RequestFields {
    /// From an HTTP/1.1 client, as they came.
    Sent(h1::Fields),
    /// From an h2c client, as hyper read them.
    Map(HeaderMap),
}

impl RequestFields {
    /// Each field's name and value: in order, or (a map's) grouped by name.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let (sent, map) = match self {
            RequestFields::Sent(fields) => (Some(fields.iter()), None),
            RequestFields::Map(map) => (None, Some(map.iter())),
        };
        let map = map.into_iter().flatten().map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        sent.into_iter().flatten().chain(map)
    }

    /// The first value of the field `name`, if any.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            RequestFields::Sent(fields) => fields.get(name.as_str()),
            RequestFields::Map(map) => map.get(name).map(HeaderValue::as_bytes),
        }
    }
}

impl ProxyRequest {
    /// Whether the request asks to switch protocols (WebSocket and the like, HTTP/1 only).
    /// One with a body is forwarded as a plain request (`Upgrade` left out): its body and
    /// the new protocol's bytes would share the client's connection.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade && http_body::Body::is_end_stream(&self.body)
    }
}

/// An h2c request, as hyper read it.
impl From<Request<RequestBody>> for ProxyRequest {
    fn from(req: Request<RequestBody>) -> Self {
        let (parts, body) = req.into_parts();
        let fields = RequestFields::Map(parts.headers);
        Self { method: parts.method, uri: parts.uri, version: parts.version, fields, body, upgrade: false }
    }
}
