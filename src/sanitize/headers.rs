//! Header hygiene (pipeline stage 4, and stage 12 for responses).
//!
//! Requests lose hop-by-hop headers and every client-sent `X-Portcullis-*` identity header, and
//! get `X-Forwarded-For`/`-Proto`/`-Host`; inbound forwarded values are kept only when the peer
//! is a configured trusted proxy. Responses lose hop-by-hop headers and `Server`/`X-Powered-By`.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use ipnet::IpNet;

/// Headers that describe one connection and must never be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `X-Powered-By`.
const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(name)
        || (name == header::TE
            && !headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")))
}

/// Removes hop-by-hop headers, including those named in `Connection`. `TE: trailers` survives.
/// With `identity`, also every `x-portcullis-*` header. One scan over the names; nothing is
/// allocated when there is nothing to remove (the common case).
pub fn strip(headers: &mut HeaderMap, identity: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name, headers) || (identity && name.as_str().starts_with("x-portcullis-"))
        {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    if let Some(conn) = headers.get(header::CONNECTION) {
        for n in conn.to_str().unwrap_or("").split(',') {
            if let Ok(n) = HeaderName::from_bytes(n.trim().as_bytes())
                // Never let `Connection` strip end-to-end headers the gateway itself sets.
                && n != crate::observe::request_id::X_REQUEST_ID
            {
                doomed.push(n);
            }
        }
    }
    for n in doomed {
        headers.remove(n);
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`. `TE: trailers` survives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, false);
}

/// Removes every inbound header whose name starts with `x-portcullis-`.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-portcullis-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// Whether `ip` is one of the configured trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// Sets `X-Forwarded-For`/`-Proto`/`-Host`. Inbound values are kept (and appended to) only when
/// the peer is trusted; otherwise they are replaced.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
    trusted: bool,
) {
    let prev = if trusted {
        headers
            .get(&X_FORWARDED_FOR)
            .filter(|v| !v.as_bytes().trim_ascii().is_empty())
    } else {
        None
    };
    let value = match prev {
        Some(prev) => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + peer.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        None => Some(peer.clone()),
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Removes headers from an upstream response that leak the backend's identity or the hop.
pub fn clean_response(headers: &mut HeaderMap) {
    strip(headers, false);
    headers.remove(header::SERVER);
    headers.remove(X_POWERED_BY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn forwarded_for_is_replaced_unless_peer_is_trusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let peer_v = HeaderValue::from_static("192.0.2.1");
        set_forwarded(&mut h, &peer_v, "http", None, is_trusted(peer, &trusted));
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("10.1.1.1"),
            "http",
            Some(&HeaderValue::from_static("api")),
            is_trusted(proxy, &trusted),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 10.1.1.1");
        assert_eq!(h[&X_FORWARDED_HOST], "api");
    }

    #[test]
    fn identity_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-portcullis-subject", HeaderValue::from_static("admin"));
        h.insert("x-portcullis-tenant", HeaderValue::from_static("acme"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_identity_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
