//! TLS termination and mTLS identity with real rustls clients (and openssl s_client for the
//! protocol floor), certificates made with rcgen.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis::tls::devcerts::{DevCa, Issued, Usage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::support::*;

/// The certificates of one test.
pub(crate) struct Pki {
    pub(crate) dir: TempDir,
    pub(crate) ca: DevCa,
    pub(crate) client: Issued,
    pub(crate) service: Issued,
    pub(crate) expired: Issued,
    pub(crate) revoked: Issued,
    pub(crate) rogue: Issued,
    /// A certificate from the trusted CA but for servers only (no clientAuth EKU).
    pub(crate) server_only: Issued,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = TempDir::new();
        let ca = DevCa::new("Test CA").unwrap();
        let server = ca
            .issue(
                "localhost",
                &["localhost", "127.0.0.1"],
                Usage::Server,
                1,
                30,
            )
            .unwrap();
        let client = ca.issue("acme-web", &[], Usage::Client, 2, 30).unwrap();
        let service = ca
            .issue(
                "reconciler",
                &["spiffe://acme.internal/reconciler"],
                Usage::Client,
                3,
                30,
            )
            .unwrap();
        let expired = ca.issue("acme-web", &[], Usage::Client, 4, -2).unwrap();
        let revoked = ca.issue("acme-web", &[], Usage::Client, 5, 30).unwrap();
        let rogue = DevCa::new("Rogue CA")
            .unwrap()
            .issue("acme-web", &[], Usage::Client, 2, 30)
            .unwrap();
        let server_only = ca
            .issue("acme-web", &["acme-web.internal"], Usage::Server, 6, 30)
            .unwrap();
        dir.write("ca.pem", &ca.cert_pem);
        dir.write("server.pem", &server.cert_pem);
        dir.write("server-key.pem", &server.key_pem);
        dir.write("crl.pem", &ca.crl(&[5]).unwrap());
        Self {
            dir,
            ca,
            client,
            service,
            expired,
            revoked,
            rogue,
            server_only,
        }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A `tls:` block for a listener.
    pub(crate) fn listener_tls(&self, client_auth: &str) -> String {
        format!(
            "    tls:\n      certificates:\n        - cert: {}\n          key: {}\n      client_auth: {client_auth}\n      client_ca: [{}]\n      crl: [{}]\n",
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem"),
            self.path("crl.pem")
        )
    }
}

const ROUTES: &str = "routes:
  - name: accounts
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: main
    auth: public
  - name: reports
    methods: [GET]
    path: /v1/reports/{tenant_id}/daily
    cluster: main
    auth: mtls
    mtls:
      any_of:
        - uri: \"spiffe://acme.internal/*\"
  - name: payments
    methods: [GET, POST]
    path: /v1/payments
    cluster: main
    auth: mtls
    mtls:
      any_of:
        - cn: acme-web
";

async fn tls_gateway(pki: &Pki, client_auth: &str, backend: &Backend) -> Gateway {
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", backend.addr);
    let yaml = gateway_yaml(&clusters, "").replace(
        "    address: 127.0.0.1:0\nadmin",
        &format!(
            "    address: 127.0.0.1:0\n{}admin",
            pki.listener_tls(client_auth)
        ),
    );
    Gateway::start(&yaml, ROUTES).await
}

pub(crate) fn client_config(
    ca_pem: &str,
    cert: Option<&Issued>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match cert {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// A TLS connection: the rustls stream (to look at the server's certificate) turned into a
/// hyper HTTP/1.1 or HTTP/2 sender.
pub(crate) struct TlsConn {
    server_cert: Vec<u8>,
    h1: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
}

pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    cfg: rustls::ClientConfig,
) -> Result<TlsConn, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let server_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (s, c) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        Ok(TlsConn {
            server_cert,
            h1: None,
            h2: Some(s),
        })
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        Ok(TlsConn {
            server_cert,
            h1: Some(s),
            h2: None,
        })
    }
}

impl TlsConn {
    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Resp, http::Version), String> {
        self.send("GET", path, headers, Bytes::new()).await
    }

    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(Resp, http::Version), String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).unwrap();
        let res = match (&mut self.h1, &mut self.h2) {
            (Some(s), _) => {
                s.ready().await.map_err(|e| e.to_string())?;
                let (mut p, b) = req.into_parts();
                p.uri = path.parse().unwrap();
                p.headers.insert("host", "localhost".parse().unwrap());
                s.send_request(Request::from_parts(p, b))
                    .await
                    .map_err(|e| e.to_string())?
            }
            (_, Some(s)) => s.send_request(req).await.map_err(|e| e.to_string())?,
            _ => unreachable!(),
        };
        let version = res.version();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((
            Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            version,
        ))
    }
}

/// One request on a fresh TLS connection; `Err` when the handshake or the exchange fails.
async fn tls_get(
    gw: &Gateway,
    pki: &Pki,
    cert: Option<&Issued>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let mut c = connect(
        gw.addr,
        client_config(&pki.ca.cert_pem, cert, &[b"http/1.1"]),
    )
    .await?;
    c.get(path, headers).await.map(|(r, _)| r)
}

fn fingerprint(cert: &Issued) -> String {
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
    hex(&Sha256::digest(der.as_ref()))
}

async fn handshakes(gw: &Gateway, result: &str) -> f64 {
    let m = prom::parse(&gw.metrics().await).unwrap();
    prom::value(&m, "portcullis_tls_handshakes_total", &[("result", result)]).unwrap_or(0.0)
}

/// The client can see a refused handshake before the server task has counted it: wait (bounded)
/// for the counter to reach `want`, then return what it reads.
async fn handshakes_reach(gw: &Gateway, result: &str, want: f64) -> f64 {
    eventually(
        &format!("{result} handshakes to reach {want}"),
        Duration::from_secs(5),
        || async { handshakes(gw, result).await >= want },
    )
    .await;
    handshakes(gw, result).await
}

#[tokio::test]
async fn a_trusted_client_reaches_the_backend_with_its_identity_and_spoofs_are_dropped() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "required", &b).await;
    let r = tls_get(
        &gw,
        &pki,
        Some(&pki.client),
        "/v1/accounts/acc-100",
        &[("x-portcullis-client-cert", "sha256=forged;san=\"admin\"")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // Response hygiene over TLS: HSTS (the default value), nosniff, no-store.
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    let seen = v["headers"]["x-portcullis-client-cert"].as_str().unwrap();
    assert_eq!(
        seen,
        format!("sha256={};cn=\"acme-web\"", fingerprint(&pki.client)),
        "the forged value never reaches the backend"
    );
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(handshakes(&gw, "ok").await, 1.0);
}

#[tokio::test]
async fn missing_untrusted_expired_and_revoked_client_certificates_are_refused() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "required", &b).await;
    for (who, cert, result) in [
        ("no certificate", None, "no_client_cert"),
        ("untrusted CA", Some(&pki.rogue), "untrusted"),
        ("expired", Some(&pki.expired), "expired"),
        ("revoked", Some(&pki.revoked), "revoked"),
    ] {
        let r = tls_get(&gw, &pki, cert, "/v1/accounts/acc-100", &[]).await;
        assert!(r.is_err(), "{who}: expected a refused handshake, got {r:?}");
        assert_eq!(
            handshakes_reach(&gw, result, 1.0).await,
            1.0,
            "{who} counted as {result}"
        );
    }
    // A certificate of the trusted CA without the clientAuth extended key usage is refused too.
    let r = tls_get(
        &gw,
        &pki,
        Some(&pki.server_only),
        "/v1/accounts/acc-100",
        &[],
    )
    .await;
    assert!(
        r.is_err(),
        "a server-only certificate must not authenticate a client: {r:?}"
    );
    assert_eq!(handshakes_reach(&gw, "untrusted", 2.0).await, 2.0);
    assert_eq!(
        b.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    // The same listener still serves a good client.
    assert_eq!(
        tls_get(&gw, &pki, Some(&pki.client), "/v1/accounts/acc-1", &[])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn an_optional_listener_admits_anonymous_callers_but_mtls_routes_answer_403() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "optional", &b).await;
    let r = tls_get(&gw, &pki, None, "/v1/accounts/acc-100", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"]
            .get("x-portcullis-client-cert")
            .is_none()
    );
    let r = tls_get(&gw, &pki, None, "/v1/reports/acme/daily", &[])
        .await
        .unwrap();
    let v = assert_problem(&r, 403);
    assert_eq!(v["type"], "urn:portcullis:problem:mtls-identity-required");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("spiffe://acme.internal/*"),
        "names the requirement: {v}"
    );
}

#[tokio::test]
async fn route_identity_patterns_admit_the_spiffe_service_only_where_allowed() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "required", &b).await;
    let r = tls_get(&gw, &pki, Some(&pki.service), "/v1/reports/acme/daily", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-portcullis-client-cert"],
        format!(
            "sha256={};san=\"spiffe://acme.internal/reconciler\"",
            fingerprint(&pki.service)
        )
    );
    let r = tls_get(&gw, &pki, Some(&pki.service), "/v1/payments", &[])
        .await
        .unwrap();
    let v = assert_problem(&r, 403);
    let text = v.to_string();
    assert!(text.contains("cn acme-web"), "{text}");
    assert!(
        !text.contains("reconciler"),
        "the refusal does not echo the certificate: {text}"
    );
    // The user-facing client is the one admitted on payments, and not on reports.
    assert_eq!(
        tls_get(&gw, &pki, Some(&pki.client), "/v1/payments", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        tls_get(&gw, &pki, Some(&pki.client), "/v1/reports/acme/daily", &[])
            .await
            .unwrap()
            .status,
        403
    );
}

#[tokio::test]
async fn tls13_with_http2_over_alpn_works() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "required", &b).await;
    let mut c = connect(
        gw.addr,
        client_config(&pki.ca.cert_pem, Some(&pki.client), &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    let (r, version) = c.get("/v1/accounts/acc-7", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(version, http::Version::HTTP_2);
    let m = prom::parse(&gw.metrics().await).unwrap();
    assert_eq!(
        prom::value(
            &m,
            "portcullis_tls_connections_total",
            &[("version", "1.3"), ("alpn", "h2")]
        ),
        Some(1.0)
    );
}

fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-brief",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed by tests/run.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        text.contains("CONNECTION ESTABLISHED") || text.contains("Protocol version:"),
        text,
    )
}

#[tokio::test]
async fn old_protocols_and_cbc_suites_are_refused() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "off", &b).await;
    let addr = gw.addr;
    tokio::task::spawn_blocking(move || {
        // Positive controls: the same client settings succeed with TLS 1.2 and 1.3.
        let (ok, text) = s_client(addr, &["-tls1_2", "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(ok, "TLS 1.2 must work: {text}");
        let (ok, text) = s_client(addr, &["-tls1_3"]);
        assert!(ok, "TLS 1.3 must work: {text}");
        // TLS 1.1 and 1.0, offered by a client allowed to use them, are refused by the server.
        for v in ["-tls1_1", "-tls1"] {
            let (ok, text) = s_client(addr, &[v, "-cipher", "DEFAULT@SECLEVEL=0"]);
            assert!(!ok, "{v} must be refused: {text}");
            assert!(
                text.contains("alert") || text.contains("version"),
                "{v}: refused by the server: {text}"
            );
        }
        // A TLS 1.2 client that offers only CBC suites finds no shared cipher.
        let (ok, text) = s_client(
            addr,
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA256",
            ],
        );
        assert!(!ok, "CBC-only must be refused: {text}");
        assert!(
            text.contains("handshake failure") || text.contains("alert"),
            "{text}"
        );
    })
    .await
    .unwrap();
    assert!(handshakes_reach(&gw, "protocol", 3.0).await >= 3.0);
}

#[tokio::test]
async fn rotating_the_server_certificate_reaches_new_connections_and_garbage_is_refused() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let gw = tls_gateway(&pki, "required", &b).await;
    let cfg = || client_config(&pki.ca.cert_pem, Some(&pki.client), &[b"http/1.1"]);
    let mut old = connect(gw.addr, cfg()).await.unwrap();
    assert_eq!(old.get("/v1/accounts/a", &[]).await.unwrap().0.status, 200);
    let first = old.server_cert.clone();

    let next = pki
        .ca
        .issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            Usage::Server,
            77,
            30,
        )
        .unwrap();
    pki.dir.write("server-key.pem", &next.key_pem);
    pki.dir.write("server.pem", &next.cert_pem);
    let rotated = CertificateDer::from_pem_slice(next.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    assert_ne!(first, rotated);
    eventually(
        "new connections to see the new certificate",
        Duration::from_secs(10),
        || async {
            connect(gw.addr, cfg())
                .await
                .is_ok_and(|c| c.server_cert == rotated)
        },
    )
    .await;
    // The keep-alive connection opened before the rotation still works.
    assert_eq!(old.get("/v1/accounts/b", &[]).await.unwrap().0.status, 200);

    // Garbage: counted, logged, and the rotated certificate stays in use.
    pki.dir.write(
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
    );
    eventually(
        "the broken certificate to be counted",
        Duration::from_secs(10),
        || async {
            let m = prom::parse(&gw.metrics().await).unwrap();
            prom::value(&m, "portcullis_tls_reloads_total", &[("result", "failure")]) == Some(1.0)
        },
    )
    .await;
    let c = connect(gw.addr, cfg()).await.unwrap();
    assert_eq!(c.server_cert, rotated);
}

#[tokio::test]
async fn an_upstream_that_demands_a_client_certificate_is_reached() {
    let pki = Pki::new();
    // A backend on TLS that requires a client certificate from our CA.
    let backend_cert = pki
        .ca
        .issue(
            "ledger.internal",
            &["ledger.internal"],
            Usage::Server,
            40,
            30,
        )
        .unwrap();
    let gw_client = pki
        .ca
        .issue(
            "portcullis-gateway",
            &["spiffe://acme.internal/gateway"],
            Usage::Client,
            41,
            30,
        )
        .unwrap();
    pki.dir.write("gw-client.pem", &gw_client.cert_pem);
    pki.dir.write("gw-client-key.pem", &gw_client.key_pem);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(backend_cert.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(backend_cert.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.len())
                    .unwrap_or(0);
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        format!("{{\"client_certs\":{peer}}}"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let cluster = |with_cert: bool| {
        let cert = if with_cert {
            format!(
                "      client_cert: {}\n      client_key: {}\n",
                pki.path("gw-client.pem"),
                pki.path("gw-client-key.pem")
            )
        } else {
            String::new()
        };
        format!(
            "  main:\n    endpoints: [\"{addr}\"]\n    tls:\n      ca: [{}]\n      server_name: ledger.internal\n{cert}",
            pki.path("ca.pem")
        )
    };
    let routes = "routes:\n  - name: ledger\n    methods: [GET]\n    path: /v1/ledger\n    cluster: main\n    auth: public\n";
    let gw = Gateway::start(&gateway_yaml(&cluster(true), ""), routes).await;
    let r = get(&gw.url("/v1/ledger"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["client_certs"], 1);
    // Negative control: without the client certificate the backend refuses the gateway.
    let gw = Gateway::start(&gateway_yaml(&cluster(false), ""), routes).await;
    assert_eq!(get(&gw.url("/v1/ledger"), &[]).await.status, 502);
}

#[tokio::test]
async fn sighup_reloads_certificates_when_file_polling_is_off() {
    let pki = Pki::new();
    let b = Backend::start("main").await;
    let (port, admin) = (closed_port(), closed_port());
    let yaml = gateway_yaml(
        &format!("  main:\n    endpoints: [\"{}\"]\n", b.addr),
        "reload:\n  poll_interval: 0s\n",
    )
    .replace(
        "    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0",
        &format!(
            "    address: {port}\n{}admin:\n  address: {admin}",
            pki.listener_tls("required")
        ),
    );
    let cfg = pki.dir.write("gateway.yaml", &yaml);
    pki.dir.write("routes/routes.yaml", ROUTES);
    let mut child = run_binary(&cfg, admin, false).await;
    let client = || client_config(&pki.ca.cert_pem, Some(&pki.client), &[b"http/1.1"]);
    let first = connect(port, client()).await.unwrap().server_cert;
    let next = pki
        .ca
        .issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            Usage::Server,
            88,
            30,
        )
        .unwrap();
    pki.dir.write("server-key.pem", &next.key_pem);
    pki.dir.write("server.pem", &next.cert_pem);
    // Polling is off: without a signal the old certificate stays. Showing that something does
    // not happen takes time: longer than the default 1 s poll that would otherwise pick it up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(connect(port, client()).await.unwrap().server_cert, first);
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let want = CertificateDer::from_pem_slice(next.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    eventually(
        "SIGHUP to reload the certificate",
        Duration::from_secs(10),
        || async {
            connect(port, client())
                .await
                .is_ok_and(|c| c.server_cert == want)
        },
    )
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
            .success()
    );
}
