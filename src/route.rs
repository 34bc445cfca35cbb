//! Route matching: method + path pattern, first match wins. Pure code over `&str`, so the
//! matcher is benchmarked and tested without a server.
//!
//! Patterns: exact `/claims/submit`, prefix `/claims/*` (also matches `/claims` itself),
//! template `/claims/{id}` (one non-empty segment per `{..}`), and templates ending in
//! `/*`. Matching sees the path after [`normalize`], never the query.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// The whole path equals this.
    Exact(Box<str>),
    /// The path equals this or continues with `/`. Empty for `/*`.
    Prefix(Box<str>),
    /// Segment by segment; `rest` when the pattern ends in `/*`.
    Template { segments: Box<[Segment]>, rest: bool },
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    shape: Shape,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        if text.contains(['?', '#']) {
            return Err(format!("`{text}` must be a path only, without `?` or `#`"));
        }
        let (body, rest) = match text.strip_suffix("/*") {
            Some(body) => (body, true),
            None => (text, false),
        };
        let mut segments = Vec::new();
        for (i, segment) in body.split('/').enumerate().skip(1) {
            if segment.contains('*') {
                return Err(format!("`{text}`: `*` may only be the whole last segment, as in `/claims/*`"));
            }
            if segment.starts_with('{') && segment.ends_with('}') && segment.len() > 2 {
                segments.push(Segment::Param);
            } else if segment.contains(['{', '}']) {
                return Err(format!("`{text}`: segment {i} must be a literal or a whole `{{name}}`"));
            } else if segment == "." || segment == ".." {
                return Err(format!("`{text}`: dot segments never match"));
            } else {
                segments.push(Segment::Literal(segment.into()));
            }
        }
        let all_literal = segments.iter().all(|s| matches!(s, Segment::Literal(_)));
        let shape = match (all_literal, rest) {
            (true, false) => Shape::Exact(body.into()),
            (true, true) => Shape::Prefix(body.into()),
            (false, _) => Shape::Template { segments: segments.into(), rest },
        };
        Ok(Self { shape })
    }

    pub fn matches(&self, path: &str) -> bool {
        match &self.shape {
            Shape::Exact(p) => path == &**p,
            Shape::Prefix(p) => match path.strip_prefix(&**p) {
                Some(tail) => tail.is_empty() || tail.starts_with('/'),
                None => false,
            },
            Shape::Template { segments, rest } => {
                let mut parts = path.split('/').skip(1);
                for segment in segments.iter() {
                    match (segment, parts.next()) {
                        (Segment::Literal(l), Some(part)) if part == &**l => {}
                        (Segment::Param, Some(part)) if !part.is_empty() => {}
                        _ => return false,
                    }
                }
                *rest || parts.next().is_none()
            }
        }
    }
}

/// An ordered list of (method, pattern) pairs. Exact paths are found through a hash map,
/// so a long list of exact routes costs one lookup; the other patterns are scanned, but
/// only those that come before the exact candidate, which keeps first-match-wins.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    routes: Vec<(Option<Method>, PathPattern)>,
    /// Exact path → indices of the routes with that path, in order.
    exact: HashMap<Box<str>, Vec<usize>, foldhash::fast::RandomState>,
    /// Indices of the routes that are not exact, in order.
    scanned: Vec<usize>,
}

impl Matcher {
    pub fn new(routes: Vec<(Option<Method>, PathPattern)>) -> Self {
        let mut exact: HashMap<Box<str>, Vec<usize>, _> = HashMap::default();
        let mut scanned = Vec::new();
        for (i, (_, pattern)) in routes.iter().enumerate() {
            match &pattern.shape {
                Shape::Exact(path) => exact.entry(path.clone()).or_default().push(i),
                _ => scanned.push(i),
            }
        }
        Self { routes, exact, scanned }
    }

    /// The index of the first route that matches, if any.
    #[inline]
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        let method_ok = |i: usize| self.routes[i].0.as_ref().is_none_or(|m| m == method);
        let exact = self.exact.get(path).and_then(|candidates| candidates.iter().copied().find(|&i| method_ok(i)));
        let before = exact.unwrap_or(usize::MAX);
        self.scanned
            .iter()
            .copied()
            .take_while(|&i| i < before)
            .find(|&i| method_ok(i) && self.routes[i].1.matches(path))
            .or(exact)
    }
}

/// Why a request path is refused before matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// `.` or `..` segments: the service may resolve them to a path of another route.
    DotSegment,
    /// A malformed `%` escape.
    BadEscape,
}

/// The form of a path that routes are matched against. Percent-escapes of unreserved
/// characters are decoded (RFC 3986 §6.2.2.2), so `/claims/%73ubmit` cannot slip past the
/// route of `/claims/submit`; dot segments are refused rather than resolved, because the
/// service would resolve them and land on a route whose quota was not applied.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    // Byte-wise: `str`'s char searches cost 300 instructions a request.
    let path = if path.as_bytes().contains(&b'%') { Cow::Owned(decode_unreserved(path)?) } else { Cow::Borrowed(path) };
    if path.as_bytes().split(|&b| b == b'/').any(|s| s == b"." || s == b"..") {
        return Err(BadPath::DotSegment);
    }
    Ok(path)
}

fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadPath::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| BadPath::BadEscape)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath::BadEscape)?;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte as char);
            } else {
                // Reserved or non-ASCII: keep the escape, upper-cased for one spelling.
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            let c = path[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> PathPattern {
        PathPattern::parse(p).unwrap()
    }

    #[test]
    fn exact() {
        let p = pattern("/claims/submit");
        assert!(p.matches("/claims/submit"));
        assert!(!p.matches("/claims/submit/"));
        assert!(!p.matches("/claims/submitx"));
        assert!(!p.matches("/claims"));
    }

    #[test]
    fn prefix() {
        let p = pattern("/claims/*");
        assert!(p.matches("/claims"));
        assert!(p.matches("/claims/"));
        assert!(p.matches("/claims/1/2"));
        assert!(!p.matches("/claimsx"));
        let all = pattern("/*");
        assert!(all.matches("/"));
        assert!(all.matches("/anything/at/all"));
    }

    #[test]
    fn template() {
        let p = pattern("/claims/{id}");
        assert!(p.matches("/claims/42"));
        assert!(!p.matches("/claims/"));
        assert!(!p.matches("/claims/42/x"));
        assert!(!p.matches("/claims"));
        let p = pattern("/claims/{id}/docs/*");
        assert!(p.matches("/claims/42/docs"));
        assert!(p.matches("/claims/42/docs/a/b"));
        assert!(!p.matches("/claims/42/other"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["claims", "/a/*/b", "/a*", "/a/{id", "/a/x{id}", "/a?b=1", "/a/../b"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn first_match_wins() {
        let m = Matcher::new(vec![
            (Some(Method::POST), pattern("/claims/submit")),
            (None, pattern("/claims/{id}")),
            (None, pattern("/*")),
        ]);
        assert_eq!(m.find(&Method::POST, "/claims/submit"), Some(0));
        assert_eq!(m.find(&Method::GET, "/claims/submit"), Some(1));
        assert_eq!(m.find(&Method::GET, "/other"), Some(2));
        assert_eq!(Matcher::default().find(&Method::GET, "/"), None);
        // An exact route after a pattern that also matches: the pattern comes first.
        let m = Matcher::new(vec![
            (None, pattern("/a/{x}")),
            (Some(Method::GET), pattern("/a/b")),
            (None, pattern("/a/b")),
        ]);
        assert_eq!(m.find(&Method::GET, "/a/b"), Some(0));
        let m =
            Matcher::new(vec![(Some(Method::GET), pattern("/a/b")), (None, pattern("/a/b")), (None, pattern("/*"))]);
        assert_eq!(m.find(&Method::GET, "/a/b"), Some(0));
        assert_eq!(m.find(&Method::POST, "/a/b"), Some(1));
        assert_eq!(m.find(&Method::POST, "/a/c"), Some(2));
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("/claims/%73ubmit").unwrap(), "/claims/submit");
        assert_eq!(normalize("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(normalize("/a/../b"), Err(BadPath::DotSegment));
        assert_eq!(normalize("/a/%2e%2E/b"), Err(BadPath::DotSegment));
        assert_eq!(normalize("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(normalize("/a%4"), Err(BadPath::BadEscape));
        assert!(matches!(normalize("/plain").unwrap(), Cow::Borrowed(_)));
    }
}
