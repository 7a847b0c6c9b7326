//! Development helpers for tokens: signing keys for `dev-certs`, a JWKS from key files
//! (`portcullis dev-jwks`) and signed tokens (`portcullis dev-token`). For trying the gateway
//! and for benchmarks; production tokens come from a real identity provider.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Map, Value, json};

/// A private signing key read from a PKCS#8 (or PKCS#1 RSA) PEM file.
pub enum DevKey {
    /// RSA (RS256 by default, PS256 on request).
    Rsa(RsaKeyPair),
    /// ECDSA P-256 (ES256).
    P256(EcdsaKeyPair),
    /// Ed25519 (EdDSA).
    Ed25519(Ed25519KeyPair),
}

impl DevKey {
    /// Reads a key file.
    ///
    /// # Errors
    /// When the file cannot be read or holds no RSA, P-256 or Ed25519 private key.
    pub fn read(path: &Path) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_file(path)
            .map_err(|e| format!("`{}`: not a PEM private key: {e}", path.display()))?;
        Self::from_der(&der).map_err(|()| {
            format!(
                "`{}` is not an RSA (2048+ bits), P-256 or Ed25519 private key",
                path.display()
            )
        })
    }

    /// Parses a PEM private key.
    ///
    /// # Errors
    /// When the text holds no RSA, P-256 or Ed25519 private key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        Self::from_der(&der).map_err(|()| "not an RSA, P-256 or Ed25519 private key".to_owned())
    }

    fn from_der(der: &PrivateKeyDer<'_>) -> Result<Self, ()> {
        let rng = SystemRandom::new();
        match der {
            PrivateKeyDer::Pkcs8(k) => {
                let b = k.secret_pkcs8_der();
                if let Ok(k) = RsaKeyPair::from_pkcs8(b) {
                    return Ok(DevKey::Rsa(k));
                }
                if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, b, &rng)
                {
                    return Ok(DevKey::P256(k));
                }
                if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(b) {
                    return Ok(DevKey::Ed25519(k));
                }
            }
            PrivateKeyDer::Pkcs1(k) => {
                if let Ok(k) = RsaKeyPair::from_der(k.secret_pkcs1_der()) {
                    return Ok(DevKey::Rsa(k));
                }
            }
            _ => {}
        }
        Err(())
    }

    /// The algorithm tokens signed with this key use unless told otherwise.
    pub fn default_alg(&self) -> &'static str {
        match self {
            DevKey::Rsa(_) => "RS256",
            DevKey::P256(_) => "ES256",
            DevKey::Ed25519(_) => "EdDSA",
        }
    }

    /// The public JWK, with `kid`, `use: sig` and (when `alg` is given) `alg`.
    pub fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut m = Map::new();
        match self {
            DevKey::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), URL_SAFE_NO_PAD.encode(&c.n).into());
                m.insert("e".into(), URL_SAFE_NO_PAD.encode(&c.e).into());
            }
            DevKey::P256(k) => {
                let p = k.public_key().as_ref();
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), "P-256".into());
                m.insert("x".into(), URL_SAFE_NO_PAD.encode(&p[1..33]).into());
                m.insert("y".into(), URL_SAFE_NO_PAD.encode(&p[33..65]).into());
            }
            DevKey::Ed25519(k) => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert(
                    "x".into(),
                    URL_SAFE_NO_PAD.encode(k.public_key().as_ref()).into(),
                );
            }
        }
        m.insert("kid".into(), kid.into());
        m.insert("use".into(), "sig".into());
        if let Some(a) = alg {
            m.insert("alg".into(), a.into());
        }
        Value::Object(m)
    }

    /// Signs `header.claims` as a compact JWS with `alg`.
    ///
    /// # Errors
    /// When `alg` does not fit the key.
    pub fn sign(&self, alg: &str, kid: Option<&str>, claims: &Value) -> Result<String, String> {
        let mut header = json!({ "alg": alg, "typ": "JWT" });
        if let Some(k) = kid {
            header["kid"] = k.into();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig: Vec<u8> = match (self, alg) {
            (DevKey::Rsa(k), "RS256" | "PS256") => {
                let padding: &'static dyn signature::RsaEncoding = if alg == "RS256" {
                    &signature::RSA_PKCS1_SHA256
                } else {
                    &signature::RSA_PSS_SHA256
                };
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, input.as_bytes(), &mut out)
                    .map_err(|_| "RSA signing failed".to_owned())?;
                out
            }
            (DevKey::P256(k), "ES256") => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "ECDSA signing failed".to_owned())?
                .as_ref()
                .to_vec(),
            (DevKey::Ed25519(k), "EdDSA") => k.sign(input.as_bytes()).as_ref().to_vec(),
            _ => {
                return Err(format!(
                    "`{alg}` does not fit this key (use {})",
                    self.default_alg()
                ));
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The key id a key file gets by default: its file stem.
pub fn default_kid(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("key")
        .trim_end_matches("-key")
        .to_owned()
}

/// A JWKS document for `keys` (path, kid).
///
/// # Errors
/// When a key file is unusable.
pub fn jwks(keys: &[(std::path::PathBuf, String)]) -> Result<Value, String> {
    let mut out = Vec::new();
    for (path, kid) in keys {
        let k = DevKey::read(path)?;
        out.push(k.jwk(kid, Some(k.default_alg())));
    }
    Ok(json!({ "keys": out }))
}

/// The claims of a development token.
pub struct TokenSpec<'a> {
    /// `iss`.
    pub iss: &'a str,
    /// `aud`.
    pub aud: &'a str,
    /// `sub`.
    pub sub: Option<&'a str>,
    /// `tenant`.
    pub tenant: Option<&'a str>,
    /// `scope`.
    pub scope: Option<&'a str>,
    /// Lifetime in seconds.
    pub ttl: u64,
    /// RFC 8705: bind to the SHA-256 of this certificate's DER.
    pub cnf_cert_der: Option<&'a [u8]>,
    /// Extra claims.
    pub extra: Map<String, Value>,
}

/// Builds the claims object of `spec`, issued now.
pub fn claims(spec: &TokenSpec<'_>) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut m = Map::new();
    m.insert("iss".into(), spec.iss.into());
    m.insert("aud".into(), spec.aud.into());
    m.insert("iat".into(), now.into());
    m.insert("nbf".into(), now.into());
    m.insert("exp".into(), (now + spec.ttl).into());
    for (k, v) in [
        ("sub", spec.sub),
        ("tenant", spec.tenant),
        ("scope", spec.scope),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    }
    if let Some(der) = spec.cnf_cert_der {
        let thumb = URL_SAFE_NO_PAD.encode(crate::tls::identity::sha256(der));
        m.insert("cnf".into(), json!({ "x5t#S256": thumb }));
    }
    for (k, v) in &spec.extra {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// Writes the development token-signing keys and their JWKS into `dir`:
/// `jwt-es256-key.pem`, `jwt-eddsa-key.pem` (0600) and `jwks.json`.
///
/// # Errors
/// When a file cannot be written.
pub fn write_dev_keys(dir: &Path) -> Result<(), String> {
    let specs: [(&str, &rcgen::SignatureAlgorithm); 2] = [
        ("jwt-es256-key.pem", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("jwt-eddsa-key.pem", &rcgen::PKCS_ED25519),
    ];
    for (file, alg) in specs {
        let path = dir.join(file);
        if path.exists() {
            continue;
        }
        let kp = rcgen::KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
        crate::tls::devcerts::write_private(&path, &kp.serialize_pem())?;
    }
    // Key ids are what `dev-token` and `dev-jwks` default to for these files (their stems).
    let files = [dir.join("jwt-es256-key.pem"), dir.join("jwt-eddsa-key.pem")];
    let keys: Vec<_> = files.iter().map(|p| (p.clone(), default_kid(p))).collect();
    let doc = jwks(&keys)?;
    std::fs::write(dir.join("jwks.json"), format!("{doc:#}\n"))
        .map_err(|e| format!("cannot write jwks.json: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwt::Verifier;

    #[test]
    fn dev_keys_sign_tokens_the_verifier_accepts() {
        let dir = std::env::temp_dir().join(format!("pc-devkeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_dev_keys(&dir).unwrap();
        let jwks = std::fs::read_to_string(dir.join("jwks.json")).unwrap();
        let v = Verifier::for_bench("https://idp.test", "api", &jwks, &["ES256", "EdDSA"]);
        for (file, kid) in [
            ("jwt-es256-key.pem", "jwt-es256"),
            ("jwt-eddsa-key.pem", "jwt-eddsa"),
        ] {
            let key = DevKey::read(&dir.join(file)).unwrap();
            let spec = TokenSpec {
                iss: "https://idp.test",
                aud: "api",
                sub: Some("alice@acme"),
                tenant: Some("acme"),
                scope: Some("accounts:read payments:write"),
                ttl: 600,
                cnf_cert_der: None,
                extra: Map::new(),
            };
            let token = key
                .sign(key.default_alg(), Some(kid), &claims(&spec))
                .unwrap();
            let p = v.verify(&token, None).unwrap();
            assert_eq!(p.subject.as_deref(), Some("alice@acme"));
            assert_eq!(p.scopes, ["accounts:read", "payments:write"]);
            // A flipped signature bit is refused.
            let mut bad = token.clone().into_bytes();
            let last = bad.len() - 3;
            bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(
                v.verify_uncached(&bad, None).unwrap_err().reason,
                "bad_signature"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
