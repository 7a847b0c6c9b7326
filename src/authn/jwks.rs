//! JWKS key stores: one per issuer key source, fetched at start, refreshed in the background,
//! refetched (once per cooldown, shared by every waiting request) when a token names an unknown
//! `kid`, and kept serving when the source fails (up to a maximum stale age).
//!
//! Each store runs its fetches on its own small thread and event loop, so it outlives config
//! reloads (an unchanged source keeps its store, see [`store_for`]) and never competes with the
//! traffic workers. The request path only reads an `ArcSwap` snapshot of the key set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use tokio::sync::{Notify, watch};

use crate::observe::metrics::Metrics;

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// An `http` or `https` URL.
    Url(String),
    /// A local file (re-read at every refresh).
    File(PathBuf),
}

/// How an issuer's keys are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksSettings {
    /// The source.
    pub source: JwksSource,
    /// Background refresh interval (upper bound for `Cache-Control: max-age`).
    pub refresh: Duration,
    /// Minimum gap between unknown-`kid` refetches (lower bound for `max-age`).
    pub cooldown: Duration,
    /// How long the last good key set keeps serving while fetches fail.
    pub max_stale: Duration,
    /// Time allowed for one fetch.
    pub timeout: Duration,
    /// Extra CA bundles for `https` sources (the Mozilla roots when empty).
    pub ca: Vec<PathBuf>,
}

/// The key types a JWS can be verified with (never a symmetric secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA (RS*, PS*).
    Rsa,
    /// ECDSA P-256 (ES256).
    P256,
    /// ECDSA P-384 (ES384).
    P384,
    /// Ed25519 (EdDSA).
    Ed25519,
}

/// One verification key.
pub struct Key {
    /// The key id, when the JWK has one.
    pub kid: Option<String>,
    /// The JWK's `alg`, when it pins one.
    pub alg: Option<jsonwebtoken::Algorithm>,
    /// The key type.
    pub family: KeyFamily,
    /// The public key.
    pub decoding: DecodingKey,
    /// A digest of the key material (to tell whether a refetch changed anything).
    digest: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// A snapshot of an issuer's keys.
#[derive(Debug, Default)]
pub struct KeySet {
    /// The keys (a JWKS holds a handful: a linear scan beats hashing).
    pub keys: Vec<Key>,
    /// Bumped whenever the set changes; cached verifications of older generations are void.
    pub generation: u64,
}

impl KeySet {
    /// The key with id `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// How an issuer's keys are doing (for `/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The last fetch succeeded.
    Ok,
    /// Fetches are failing; the last good keys still serve.
    Stale,
    /// No usable keys (never fetched, or stale beyond `max_stale`).
    Unavailable,
}

impl Health {
    /// The word `/readyz` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Stale => "stale",
            Health::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Default)]
struct Status {
    last_success: Option<Instant>,
    failing: bool,
    last_kick: Option<Instant>,
    kicked: bool,
}

/// The keys of one source, kept fresh by a background thread.
pub struct KeyStore {
    name: Arc<str>,
    settings: JwksSettings,
    keys: ArcSwap<KeySet>,
    status: Mutex<Status>,
    /// Counts finished fetch attempts; unknown-`kid` waiters watch it.
    attempts: watch::Sender<u64>,
    kick: Notify,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("name", &self.name)
            .field("source", &self.settings.source)
            .finish_non_exhaustive()
    }
}

type Registry = Mutex<HashMap<(Arc<str>, JwksSettings), Weak<KeyStore>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The store for `settings`: the running one when a config with the same issuer name and
/// source settings is live (a reload keeps its keys and its fetch schedule), or a new one whose
/// thread fetches at once.
pub fn store_for(name: &str, settings: &JwksSettings, metrics: &Metrics) -> Arc<KeyStore> {
    let key = (Arc::<str>::from(name), settings.clone());
    let mut reg = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(store) = reg.get(&key).and_then(Weak::upgrade) {
        return store;
    }
    let store = Arc::new(KeyStore {
        name: key.0.clone(),
        settings: settings.clone(),
        keys: ArcSwap::from_pointee(KeySet::default()),
        status: Mutex::new(Status::default()),
        attempts: watch::Sender::new(0),
        kick: Notify::new(),
    });
    reg.insert(key, Arc::downgrade(&store));
    spawn_fetcher(Arc::downgrade(&store), metrics.clone());
    store
}

impl KeyStore {
    /// A store over a fixed JWKS document, with no fetching (benchmarks, tests).
    ///
    /// # Errors
    /// When the document is not a JWKS or holds no usable key.
    pub fn fixed(name: &str, jwks_json: &[u8]) -> Result<Arc<Self>, String> {
        Ok(Self::with_keys(name, parse_jwks(jwks_json)?))
    }

    /// A store over fixed keys, with no fetching.
    pub fn with_keys(name: &str, keys: Vec<Key>) -> Arc<Self> {
        Arc::new(KeyStore {
            name: name.into(),
            settings: JwksSettings {
                source: JwksSource::File(PathBuf::new()),
                refresh: Duration::from_secs(3600),
                cooldown: Duration::from_secs(3600),
                max_stale: Duration::from_secs(u32::MAX.into()),
                timeout: Duration::from_secs(1),
                ca: Vec::new(),
            },
            keys: ArcSwap::from_pointee(KeySet {
                keys,
                generation: 1,
            }),
            status: Mutex::new(Status {
                last_success: Some(Instant::now()),
                ..Status::default()
            }),
            attempts: watch::Sender::new(0),
            kick: Notify::new(),
        })
    }

    /// The current key set.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// The current generation (changes with the key set).
    pub fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// How the keys are doing.
    pub fn health(&self) -> Health {
        if self.keys.load().keys.is_empty() {
            return Health::Unavailable;
        }
        let st = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.failing {
            Health::Stale
        } else {
            Health::Ok
        }
    }

    /// A token named a key this store does not have: asks for one refetch unless one ran less
    /// than a cooldown ago, and waits (at most the fetch timeout) for the refetch in flight.
    pub async fn refetch_for_unknown_kid(&self) {
        let mut seen = self.attempts.subscribe();
        let wait = {
            let mut st = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if st.kicked {
                true
            } else if st
                .last_kick
                .is_some_and(|t| t.elapsed() < self.settings.cooldown)
            {
                false
            } else {
                st.kicked = true;
                st.last_kick = Some(Instant::now());
                self.kick.notify_one();
                true
            }
        };
        if wait {
            let limit = self.settings.timeout + Duration::from_millis(250);
            let _ = tokio::time::timeout(limit, seen.changed()).await;
        }
    }

    /// Installs `keys` as if fetched (unit tests of key-set changes).
    #[cfg(test)]
    pub fn replace_for_tests(&self, keys: Vec<Key>) {
        self.install(keys);
    }

    fn install(&self, keys: Vec<Key>) -> bool {
        let current = self.keys.load();
        let same = current.keys.len() == keys.len()
            && current.keys.iter().zip(&keys).all(|(a, b)| {
                a.digest == b.digest && a.kid == b.kid && a.alg == b.alg && a.family == b.family
            });
        if !same {
            self.keys.store(Arc::new(KeySet {
                keys,
                generation: current.generation + 1,
            }));
        }
        !same
    }
}

fn spawn_fetcher(store: Weak<KeyStore>, metrics: Metrics) {
    let name = store
        .upgrade()
        .map_or_else(|| "jwks".to_owned(), |s| format!("jwks-{}", s.name));
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the JWKS fetcher");
                return;
            }
        };
        rt.block_on(fetch_loop(store, metrics));
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the JWKS fetcher thread");
    }
}

async fn fetch_loop(store: Weak<KeyStore>, metrics: Metrics) {
    // A fetch that failed is retried sooner than the refresh interval, never faster than 1 s.
    let mut retry = Duration::from_secs(1);
    loop {
        let Some(s) = store.upgrade() else { return };
        let result = fetch(&s.settings).await;
        let label = &*s.name;
        let next = match result {
            Ok((keys, max_age)) => {
                retry = Duration::from_secs(1);
                let n = keys.len();
                let changed = s.install(keys);
                let mut st = s
                    .status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                st.last_success = Some(Instant::now());
                st.failing = false;
                drop(st);
                metrics.jwks_fetches.with_label_values(&[label, "ok"]).inc();
                metrics.jwks_keys.with_label_values(&[label]).set(n as i64);
                metrics.jwks_stale.with_label_values(&[label]).set(0);
                if changed {
                    tracing::info!(issuer = label, keys = n, "JWKS key set installed");
                }
                max_age.map_or(s.settings.refresh, |age| {
                    age.clamp(s.settings.cooldown, s.settings.refresh)
                })
            }
            Err(e) => {
                metrics
                    .jwks_fetches
                    .with_label_values(&[label, "error"])
                    .inc();
                let mut st = s
                    .status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                st.failing = true;
                let expired = st
                    .last_success
                    .is_none_or(|t| t.elapsed() > s.settings.max_stale);
                drop(st);
                tracing::warn!(issuer = label, error = %e, "JWKS fetch failed; the last good keys keep serving");
                if expired && !s.keys.load().keys.is_empty() {
                    tracing::error!(
                        issuer = label,
                        "JWKS keys are older than max_stale and are dropped"
                    );
                    s.install(Vec::new());
                    metrics.jwks_keys.with_label_values(&[label]).set(0);
                }
                metrics.jwks_stale.with_label_values(&[label]).set(1);
                let wait = retry.min(s.settings.refresh);
                retry = (retry * 2).min(Duration::from_secs(30));
                wait
            }
        };
        {
            let mut st = s
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.kicked = false;
        }
        s.attempts.send_modify(|n| *n += 1);
        drop(s);
        // Sleep until the next refresh or a kick, in steps of at most a second holding the
        // store only meanwhile, so a store that no config uses any more ends its thread.
        let deadline = tokio::time::Instant::now() + next;
        loop {
            let Some(s) = store.upgrade() else { return };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let step = (deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                () = s.kick.notified() => break,
                () = tokio::time::sleep(step) => {}
            }
        }
    }
}

async fn fetch(settings: &JwksSettings) -> Result<(Vec<Key>, Option<Duration>), String> {
    match &settings.source {
        JwksSource::File(path) => {
            let body = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            Ok((parse_jwks(&body)?, None))
        }
        JwksSource::Url(url) => {
            let (body, max_age) =
                tokio::time::timeout(settings.timeout, get(url, &settings.ca, settings.timeout))
                    .await
                    .map_err(|_| format!("no answer within {:?}", settings.timeout))??;
            Ok((parse_jwks(&body)?, max_age))
        }
    }
}

/// GETs `url`; returns the body and the `Cache-Control: max-age`.
async fn get(
    url: &str,
    ca: &[PathBuf],
    timeout: Duration,
) -> Result<(Bytes, Option<Duration>), String> {
    let deadline = Instant::now() + timeout;
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the JWKS URL must be http or https".into()),
    };
    let host = uri.host().ok_or("the JWKS URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = uri
        .authority()
        .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = if https {
        let config = client_config(ca)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad host name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(TokioIo::new(tls), req, deadline)
            .await
            .map_err(|e| format!("HTTP: {e}"))?
    } else {
        exchange(TokioIo::new(tcp), req, deadline)
            .await
            .map_err(|e| format!("HTTP: {e}"))?
    };
    if res.status() != http::StatusCode::OK {
        return Err(format!("status {}", res.status().as_u16()));
    }
    let max_age = res
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((body, max_age))
}

/// One HTTP/1.1 exchange on `io` for the gateway's own outbound calls (JWKS, ownership
/// services); the connection task ends with the exchange, or at `deadline` at the latest.
///
/// # Errors
/// The handshake or the exchange failed.
pub(crate) async fn exchange<IO>(
    io: IO,
    req: http::Request<Empty<Bytes>>,
    deadline: Instant,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = tokio::time::timeout_at(deadline.into(), conn).await;
    });
    sender.send_request(req).await
}

/// An HTTP/1.1 TLS client config trusting `ca` (the Mozilla roots when empty), for the
/// gateway's own outbound calls (JWKS, ownership services).
///
/// # Errors
/// When a CA file is unreadable.
pub(crate) fn client_config(ca: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if ca.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for path in ca {
            for cert in crate::tls::read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("`{}`: {e}", path.display()))?;
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Parses a JWKS document into verification keys. Keys this gateway never verifies with are
/// skipped (and logged): symmetric (`oct`) keys, encryption keys (`use: enc`), curves other
/// than P-256, P-384 and Ed25519, and malformed entries; one bad key does not void the others.
///
/// # Errors
/// When the document is not a JSON object with a `keys` array.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(items) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWKS: no `keys` array".into());
    };
    let mut keys = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match key_from(item) {
            Ok(k) => keys.push(k),
            Err(why) => tracing::info!(index = i, reason = why, "JWKS key skipped"),
        }
    }
    Ok(keys)
}

fn key_from(item: &serde_json::Value) -> Result<Key, &'static str> {
    let jwk: Jwk = serde_json::from_value(item.clone()).map_err(|_| "malformed JWK")?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signature key (`use`)");
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(
            format!("{a:?}")
                .parse::<jsonwebtoken::Algorithm>()
                .map_err(|_| "`alg` is not a signature algorithm")?,
        ),
    };
    let (family, decoding, material): (KeyFamily, DecodingKey, String) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            // ring refuses moduli under 2048 bits at verification; refuse them here already.
            let n = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &p.n)
                .map_err(|_| "bad RSA modulus")?;
            let bits = n
                .len()
                .saturating_sub(n.iter().take_while(|b| **b == 0).count())
                * 8;
            if bits < 2048 {
                return Err("RSA key under 2048 bits");
            }
            (
                KeyFamily::Rsa,
                DecodingKey::from_rsa_components(&p.n, &p.e).map_err(|_| "bad RSA key")?,
                format!("{}.{}", p.n, p.e),
            )
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let family = match p.curve {
                EllipticCurve::P256 => KeyFamily::P256,
                EllipticCurve::P384 => KeyFamily::P384,
                _ => return Err("unsupported curve"),
            };
            (
                family,
                DecodingKey::from_ec_components(&p.x, &p.y).map_err(|_| "bad EC key")?,
                format!("{}.{}", p.x, p.y),
            )
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => (
            KeyFamily::Ed25519,
            DecodingKey::from_ed_components(&p.x).map_err(|_| "bad Ed25519 key")?,
            p.x.clone(),
        ),
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported curve"),
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (`oct`) keys are never used");
        }
    };
    if let Some(a) = alg
        && !fits(a, family)
    {
        return Err("`alg` does not fit the key type");
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    material.hash(&mut h);
    Ok(Key {
        kid: jwk.common.key_id,
        alg,
        family,
        decoding,
        digest: h.finish(),
    })
}

/// Whether `alg` verifies with keys of `family`.
pub fn fits(alg: jsonwebtoken::Algorithm, family: KeyFamily) -> bool {
    use jsonwebtoken::Algorithm as A;
    matches!(
        (alg, family),
        (
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512,
            KeyFamily::Rsa
        ) | (A::ES256, KeyFamily::P256)
            | (A::ES384, KeyFamily::P384)
            | (A::EdDSA, KeyFamily::Ed25519)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_skipped_and_the_rest_kept() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"EC","crv":"P-256","use":"enc","kid":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"ok","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"hs","alg":"HS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"RSA","kid":"small","n":"AQAB","e":"AQAB"},
            "garbage"
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["ok"]);
        assert_eq!(keys[0].family, KeyFamily::P256);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"[").is_err());
    }

    #[test]
    fn algorithms_fit_only_their_key_type() {
        use jsonwebtoken::Algorithm as A;
        assert!(fits(A::PS256, KeyFamily::Rsa));
        assert!(fits(A::ES256, KeyFamily::P256));
        assert!(!fits(A::ES256, KeyFamily::P384));
        assert!(!fits(A::HS256, KeyFamily::Rsa));
        assert!(!fits(A::RS256, KeyFamily::Ed25519));
    }
}
