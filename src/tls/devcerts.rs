//! Development certificates (`portcullis dev-certs DIR`, the demo and the tests), made with
//! rcgen: a CA, a server certificate for localhost, a user-facing client (`acme-web`), a
//! SPIFFE service identity, and a client signed by a CA the gateway does not trust.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that can issue certificates and CRLs.
pub struct DevCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The serial number given to it.
    pub serial: u64,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (EKU serverAuth).
    Server,
    /// TLS client (EKU clientAuth).
    Client,
}

fn err(e: rcgen::Error) -> String {
    format!("certificate generation failed: {e}")
}

impl DevCa {
    /// A new self-signed CA valid for ten years.
    ///
    /// # Errors
    /// Key or certificate generation failed.
    pub fn new(name: &str) -> Result<Self, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name
            .push(DnType::OrganizationName, "Portcullis development");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(3650);
        let cert = p.self_signed(&key).map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// Issues a leaf certificate. `names` are DNS names, IP addresses or URIs (by their look);
    /// `valid_days` may be negative for an already expired certificate.
    ///
    /// # Errors
    /// Key or certificate generation failed.
    pub fn issue(
        &self,
        cn: &str,
        names: &[&str],
        usage: Usage,
        serial: u64,
        valid_days: i64,
    ) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        for n in names {
            let san = if n.contains("://") {
                SanType::URI(rcgen::string::Ia5String::try_from(*n).map_err(err)?)
            } else if let Ok(ip) = n.parse::<std::net::IpAddr>() {
                SanType::IpAddress(ip)
            } else {
                SanType::DnsName(rcgen::string::Ia5String::try_from(*n).map_err(err)?)
            };
            p.subject_alt_names.push(san);
        }
        p.serial_number = Some(SerialNumber::from(serial));
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let now = OffsetDateTime::now_utc();
        if valid_days >= 0 {
            p.not_before = now - Duration::days(1);
            p.not_after = now + Duration::days(valid_days.max(1));
        } else {
            p.not_before = now - Duration::days(30);
            p.not_after = now + Duration::days(valid_days);
        }
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A CRL revoking `serials`, valid for 30 days.
    ///
    /// # Errors
    /// CRL generation failed.
    pub fn crl(&self, serials: &[u64]) -> Result<String, String> {
        let now = OffsetDateTime::now_utc();
        let p = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        p.signed_by(&self.issuer).map_err(err)?.pem().map_err(err)
    }
}

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> Result<(), String> {
    let path = dir.join(name);
    if secret {
        return write_private(&path, text);
    }
    std::fs::write(&path, text).map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Writes a private key readable by its owner only (created 0600, never wider).
///
/// # Errors
/// When the file cannot be written.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| format!("cannot write `{}`: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its mode on open: narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// The files [`write_dev_certs`] creates.
pub const DEV_FILES: &[&str] = &[
    "ca.pem",
    "server.pem",
    "server-key.pem",
    "client.pem",
    "client-key.pem",
    "service.pem",
    "service-key.pem",
    "other-ca.pem",
    "rogue-client.pem",
    "rogue-client-key.pem",
    "crl.pem",
    "jwt-es256-key.pem",
    "jwt-eddsa-key.pem",
    "jwks.json",
];

/// Writes the development CA and certificates into `dir` (private keys 0600).
///
/// # Errors
/// Generation or file errors.
pub fn write_dev_certs(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let ca = DevCa::new("Portcullis Dev CA")?;
    let server = ca.issue(
        "localhost",
        &["localhost", "127.0.0.1", "::1"],
        Usage::Server,
        1001,
        825,
    )?;
    let client = ca.issue("acme-web", &[], Usage::Client, 1002, 825)?;
    let service = ca.issue(
        "reconciler",
        &["spiffe://acme.internal/reconciler"],
        Usage::Client,
        1003,
        825,
    )?;
    let other = DevCa::new("Untrusted Dev CA")?;
    let rogue = other.issue(
        "rogue",
        &["spiffe://acme.internal/reconciler"],
        Usage::Client,
        6666,
        825,
    )?;
    write(dir, "ca.pem", &ca.cert_pem, false)?;
    write(dir, "server.pem", &server.cert_pem, false)?;
    write(dir, "server-key.pem", &server.key_pem, true)?;
    write(dir, "client.pem", &client.cert_pem, false)?;
    write(dir, "client-key.pem", &client.key_pem, true)?;
    write(dir, "service.pem", &service.cert_pem, false)?;
    write(dir, "service-key.pem", &service.key_pem, true)?;
    write(dir, "other-ca.pem", &other.cert_pem, false)?;
    write(dir, "rogue-client.pem", &rogue.cert_pem, false)?;
    write(dir, "rogue-client-key.pem", &rogue.key_pem, true)?;
    // An empty CRL of the dev CA, so a listener can be configured with revocation checks.
    write(dir, "crl.pem", &ca.crl(&[])?, false)?;
    // Token-signing keys of a development identity provider, and their JWKS.
    crate::authn::devtools::write_dev_keys(dir)
}
