//! Client-certificate identity (pipeline stage 1): the verified leaf certificate of an mTLS
//! connection, parsed once per connection with x509-parser into a [`PeerIdentity`] that every
//! request on the connection carries as an extension.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who is on the other end of an mTLS connection (from its verified leaf certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject distinguished name (RFC 4514 style).
    pub subject: String,
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs live here).
    pub uris: Vec<String>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
    /// SHA-256 of the certificate DER, raw (RFC 8705 `x5t#S256` compares against this).
    pub fingerprint_raw: [u8; 32],
    /// Not-after, Unix seconds.
    pub not_after: i64,
    /// The `X-Portcullis-Client-Cert` value for the identity a request last matched, kept for
    /// the connection's next requests (the same value is usual).
    pub header_cache: std::sync::OnceLock<(Option<String>, Option<http::HeaderValue>)>,
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl PeerIdentity {
    /// Parses a DER certificate.
    ///
    /// # Errors
    /// When the DER is not a certificate (cannot happen for one rustls verified).
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let subject = cert.subject().to_string();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let (mut dns, mut uris, mut emails) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => emails.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        let fingerprint_raw = sha256(der);
        Ok(Self {
            subject,
            common_name,
            dns,
            uris,
            emails,
            serial: cert.raw_serial_as_string().replace(':', ""),
            fingerprint: crate::observe::request_id::to_hex(&fingerprint_raw),
            fingerprint_raw,
            not_after: cert.validity().not_after.timestamp(),
            header_cache: std::sync::OnceLock::new(),
        })
    }
}

/// One way a route can accept an mTLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// A URI SAN, exactly or (with a trailing `*`) by prefix: `spiffe://acme.internal/*`.
    Uri(Glob),
    /// A DNS SAN, exactly or by prefix.
    Dns(Glob),
    /// The subject CN, exactly or by prefix.
    CommonName(Glob),
    /// The certificate's SHA-256 fingerprint (hex, case and `:` ignored).
    Fingerprint(String),
}

/// Exact text, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    prefix: bool,
}

impl Glob {
    /// Parses `text` (a trailing `*` makes it a prefix).
    pub fn new(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(p) => Self {
                text: p.to_owned(),
                prefix: true,
            },
            None => Self {
                text: text.to_owned(),
                prefix: false,
            },
        }
    }
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        if self.prefix {
            s.starts_with(&self.text)
        } else {
            s == self.text
        }
    }
}

impl std::fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = |g: &Glob| if g.prefix { "*" } else { "" };
        match self {
            Self::Uri(g) => write!(f, "uri {}{}", g.text, star(g)),
            Self::Dns(g) => write!(f, "dns {}{}", g.text, star(g)),
            Self::CommonName(g) => write!(f, "cn {}{}", g.text, star(g)),
            Self::Fingerprint(h) => write!(f, "fingerprint {h}"),
        }
    }
}

impl IdentityPattern {
    /// The identity value this pattern matched, if any (what the backend is told).
    pub fn matched<'a>(&self, id: &'a PeerIdentity) -> Option<&'a str> {
        match self {
            Self::Uri(g) => id.uris.iter().find(|u| g.matches(u)).map(String::as_str),
            Self::Dns(g) => id.dns.iter().find(|d| g.matches(d)).map(String::as_str),
            Self::CommonName(g) => id.common_name.as_deref().filter(|cn| g.matches(cn)),
            Self::Fingerprint(h) => (*h == id.fingerprint).then_some(id.fingerprint.as_str()),
        }
    }
}

/// Normalises a fingerprint as written in config: lowercase hex, `:` removed, optional
/// `sha256:` prefix. `None` unless it is 64 hex digits.
pub fn normalise_fingerprint(s: &str) -> Option<String> {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let h: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit())).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_fingerprints() {
        assert!(Glob::new("spiffe://acme.internal/*").matches("spiffe://acme.internal/reconciler"));
        assert!(
            !Glob::new("spiffe://acme.internal/*").matches("spiffe://evil.internal/acme.internal/")
        );
        assert!(Glob::new("acme-web").matches("acme-web"));
        assert!(!Glob::new("acme-web").matches("acme-web2"));
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(normalise_fingerprint(&fp), Some("ab".repeat(32)));
        assert_eq!(normalise_fingerprint("abc"), None);
    }
}
