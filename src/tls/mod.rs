//! TLS termination (pipeline stage 1): rustls listeners with TLS 1.2 (ECDHE + AEAD only) and
//! TLS 1.3, ALPN `h2`/`http/1.1`, certificates chosen by SNI, client certificates verified
//! against configured CA bundles and CRLs, and live rotation of all of that material.
//!
//! The connection's verified identity becomes a [`identity::PeerIdentity`], attached by the
//! server to every request on the connection. [`client`] builds the TLS config for upstreams.

pub mod client;
pub mod devcerts;
pub mod identity;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is requested.
    #[default]
    Off,
    /// Requested and verified when sent; connections without one proceed.
    Optional,
    /// Required: a handshake without a trusted certificate is refused.
    Required,
}

/// A certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A listener's TLS settings (validated; files resolved relative to the gateway file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Server certificates; the first is the default when SNI matches none.
    pub certificates: Vec<CertFiles>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA bundles that client certificates must chain to.
    pub client_ca: Vec<PathBuf>,
    /// CRLs; when set, every client CA needs its CRL.
    pub crl: Vec<PathBuf>,
}

impl TlsSettings {
    /// Every file this listener's TLS depends on.
    pub fn files(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = Vec::new();
        for c in &self.certificates {
            v.push(&c.cert);
            v.push(&c.key);
        }
        v.extend(self.client_ca.iter().map(PathBuf::as_path));
        v.extend(self.crl.iter().map(PathBuf::as_path));
        v
    }

    /// A hash of every file's contents (for change detection).
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for f in self.files() {
            std::fs::read(f).ok().hash(&mut h);
        }
        h.finish()
    }
}

/// The crypto provider: ring, with TLS 1.2 limited to ECDHE + AEAD suites (rustls offers no
/// other kind, and the filter keeps it so).
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| {
        let name = format!("{:?}", s.suite());
        name.starts_with("TLS13_")
            || (name.starts_with("TLS_ECDHE_")
                && (name.contains("GCM") || name.contains("CHACHA20")))
    });
    Arc::new(p)
}

/// What was loaded, for metrics: (kind, subject, not-after Unix seconds).
pub type NotAfter = Vec<(&'static str, String, i64)>;

/// Reads a PEM certificate file (one or more certificates).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("`{}` is not a PEM private key: {e}", path.display()))
}

fn cert_info(der: &[u8]) -> (String, i64, Vec<String>) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    match X509Certificate::from_der(der) {
        Ok((_, c)) => {
            let mut names = Vec::new();
            if let Ok(Some(san)) = c.subject_alternative_name() {
                for n in &san.value.general_names {
                    if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                        names.push(d.to_ascii_lowercase());
                    }
                }
            }
            (
                c.subject().to_string(),
                c.validity().not_after.timestamp(),
                names,
            )
        }
        Err(_) => (String::from("unparsable"), 0, Vec::new()),
    }
}

/// Loads a certificate chain and key and checks that they belong together.
///
/// # Errors
/// A message naming the file and what is wrong with it.
pub fn load_certified_key(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("`{}`: unsupported private key: {e}", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|_| {
        format!(
            "key `{}` does not match certificate `{}`",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(ck)
}

/// Chooses the server certificate by SNI: exact DNS SAN, then `*.` wildcard, then the default.
#[derive(Debug)]
struct SniResolver {
    by_name: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let sni = sni.to_ascii_lowercase();
        let exact = self.by_name.iter().find(|(n, _)| *n == sni);
        let wild = || {
            let parent = sni.split_once('.').map(|(_, p)| p)?;
            self.by_name
                .iter()
                .find(|(n, _)| n.strip_prefix("*.") == Some(parent))
        };
        Some(
            exact
                .or_else(wild)
                .map_or_else(|| self.default.clone(), |(_, k)| k.clone()),
        )
    }
}

/// Builds the rustls server config for `s`.
///
/// # Errors
/// Unreadable, malformed or mismatched files, named in the message.
pub fn build_server(s: &TlsSettings) -> Result<(Arc<ServerConfig>, NotAfter), String> {
    let provider = provider();
    let mut not_after = Vec::new();
    let mut by_name = Vec::new();
    let mut default = None;
    for files in &s.certificates {
        let ck = Arc::new(load_certified_key(files, &provider)?);
        let (subject, exp, names) = ck
            .cert
            .first()
            .map_or((String::new(), 0, Vec::new()), |c| cert_info(c));
        not_after.push(("server", subject, exp));
        for n in names {
            by_name.push((n, ck.clone()));
        }
        default.get_or_insert(ck);
    }
    let Some(default) = default else {
        return Err("at least one server certificate is needed".into());
    };
    let verifier = if s.client_auth == ClientAuth::Off {
        WebPkiClientVerifier::no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for path in &s.client_ca {
            for c in read_certs(path)? {
                let (subject, exp, _) = cert_info(&c);
                roots.add(c).map_err(|e| {
                    format!("`{}`: not a usable CA certificate: {e}", path.display())
                })?;
                not_after.push(("client_ca", subject, exp));
            }
        }
        let mut crls = Vec::new();
        for path in &s.crl {
            let list: Vec<CertificateRevocationListDer<'static>> =
                CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("`{}` is not a PEM CRL file: {e}", path.display()))?;
            if list.is_empty() {
                return Err(format!("`{}` holds no CRL", path.display()));
            }
            crls.extend(list);
        }
        let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !crls.is_empty() {
            b = b.with_crls(crls).only_check_end_entity_revocation();
        }
        if s.client_auth == ClientAuth::Optional {
            b = b.allow_unauthenticated();
        }
        b.build()
            .map_err(|e| format!("client certificate verifier: {e}"))?
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), not_after))
}

/// A listener's current TLS config, swapped atomically when its files change.
#[derive(Debug)]
pub struct TlsStore {
    /// Listener name (metrics).
    pub listener: Arc<str>,
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
    last: Mutex<u64>,
}

impl TlsStore {
    /// Loads the material for `settings`.
    ///
    /// # Errors
    /// As [`build_server`].
    pub fn new(listener: Arc<str>, settings: TlsSettings) -> Result<(Self, NotAfter), String> {
        let (cfg, not_after) = build_server(&settings)?;
        let fp = settings.fingerprint();
        Ok((
            Self {
                listener,
                settings,
                current: ArcSwap::new(cfg),
                last: Mutex::new(fp),
            },
            not_after,
        ))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads when the files changed (or always, with `force`). `Ok(None)`: nothing changed.
    ///
    /// # Errors
    /// The new material is broken; the old one stays in use.
    pub fn reload(&self, force: bool) -> Result<Option<NotAfter>, String> {
        let fp = self.settings.fingerprint();
        let mut last = self.last.lock().map_err(|_| "poisoned".to_owned())?;
        if !force && fp == *last {
            return Ok(None);
        }
        *last = fp;
        let (cfg, not_after) = build_server(&self.settings)?;
        self.current.store(cfg);
        Ok(Some(not_after))
    }
}

/// The metrics label for a failed handshake.
pub fn classify(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(e) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return "protocol";
    };
    match e {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "expired",
        E::InvalidCertificate(C::Revoked) => "revoked",
        E::InvalidCertificate(_) => "untrusted",
        _ => "protocol",
    }
}
