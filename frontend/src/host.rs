//! Finding the host a request is for, normalised the way the routing table keys it:
//! lower case, no port, no trailing dot. Works on untrusted input and never allocates
//! unless the client sent upper-case letters.

use std::borrow::Cow;

use http::header::HOST;
use http::Request;

/// The raw host the client asked for: the authority of an absolute URI (HTTP/2
/// `:authority`, or an HTTP/1 absolute-form target), else the HTTP/1 `Host` header.
/// The port, if any, is still attached. `None` when the request names no host.
pub fn raw_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    req.headers().get(HOST)?.to_str().ok()
}

/// Normalises a raw host (`Hello.Localhost:8080`, `[::1]:80`, `user@host`) into the
/// routing-table key (`hello.localhost`, `::1`, `host`). `None` when nothing is left or
/// the value is malformed (unbalanced brackets, a non-numeric port).
pub fn normalize(raw: &str) -> Option<Cow<'_, str>> {
    // Userinfo is not allowed in a Host header, but an absolute URI may carry it.
    let raw = raw.rsplit_once('@').map_or(raw, |(_, host)| host);
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// An empty port (`host:`) is allowed by RFC 3986; otherwise only digits.
fn is_port(port: &str) -> bool {
    port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        let cases = [
            ("hello.localhost", Some("hello.localhost")),
            ("hello.localhost:8080", Some("hello.localhost")),
            ("Hello.LocalHost:80", Some("hello.localhost")),
            ("hello.localhost.", Some("hello.localhost")),
            ("hello.localhost.:8080", Some("hello.localhost")),
            ("hello.localhost:", Some("hello.localhost")),
            ("user:pw@hello.localhost:1", Some("hello.localhost")),
            ("127.0.0.1:8080", Some("127.0.0.1")),
            ("[::1]:8080", Some("::1")),
            ("[::1]", Some("::1")),
            ("[::1", None),
            ("[::1]x", None),
            ("host:port", None),
            ("host:123456", None),
            ("", None),
            (":80", None),
            (".", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn lower_case_input_is_borrowed() {
        assert!(matches!(normalize("a.localhost:1"), Some(Cow::Borrowed(_))));
        assert!(matches!(normalize("A.localhost"), Some(Cow::Owned(_))));
    }

    #[test]
    fn prefers_authority_over_host_header() {
        let req = Request::builder()
            .uri("http://h2.localhost:8080/x")
            .header(HOST, "other.localhost")
            .body(())
            .unwrap();
        assert_eq!(raw_host(&req), Some("h2.localhost:8080"));

        let req = Request::builder()
            .uri("/x")
            .header(HOST, "h1.localhost")
            .body(())
            .unwrap();
        assert_eq!(raw_host(&req), Some("h1.localhost"));

        let req = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(raw_host(&req), None);
    }
}
