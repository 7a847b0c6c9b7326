//! TLS to upstreams: a cluster's own CA bundle, SNI name and optional client certificate
//! (mTLS to the backend).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

/// A cluster's upstream TLS settings (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA bundles the upstream's certificate must chain to.
    pub ca: Vec<PathBuf>,
    /// The name to send in SNI and to verify (default: the endpoint's host).
    pub server_name: Option<String>,
    /// Client certificate and key for mTLS to the upstream.
    pub client_cert: Option<super::CertFiles>,
}

/// A ready client config and the SNI name to use.
#[derive(Debug, Clone)]
pub struct Connector {
    /// The rustls config.
    pub config: Arc<ClientConfig>,
    /// SNI / verification name; `None`: use the endpoint's host.
    pub server_name: Option<ServerName<'static>>,
}

/// Builds the client config for `t`; `h2` selects ALPN `h2`, otherwise `http/1.1`.
///
/// # Errors
/// Unreadable or malformed files, named in the message.
pub fn build(t: &UpstreamTls, h2: bool) -> Result<Connector, String> {
    let mut roots = RootCertStore::empty();
    for path in &t.ca {
        for c in super::read_certs(path)? {
            roots
                .add(c)
                .map_err(|e| format!("`{}`: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("upstream TLS needs at least one CA certificate in `ca`".into());
    }
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match &t.client_cert {
        Some(files) => {
            let certs = super::read_certs(&files.cert)?;
            let key = super::read_key(&files.key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let server_name = match &t.server_name {
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|_| format!("`{n}` is not a valid TLS server name"))?,
        ),
        None => None,
    };
    Ok(Connector {
        config: Arc::new(cfg),
        server_name,
    })
}
