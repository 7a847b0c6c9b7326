//! JWT verification cost per token, for RS256 (RSA 2048) and ES256 (P-256) tokens:
//!
//! - `jwt/<alg>/hit`: `Verifier::verify` on a token it has already accepted (verified-token
//!   cache hit: lookup plus the per-request claim checks);
//! - `jwt/<alg>/miss`: `Verifier::verify_uncached` (parse, header and claim rules, signature
//!   check: what every new token costs).
//!
//! The keys are made at start: P-256 with rcgen, RSA 2048 with the `openssl` CLI in a temp dir
//! (the RS256 benchmarks are skipped, with a message, when `openssl` is not available). The
//! JWKS and the tokens (jsonwebtoken) are built here, not with the `portcullis dev-*` commands.
//!
//! `cargo bench --bench jwt` (add e.g. `-- --warm-up-time 1 --measurement-time 2` to shorten
//! it); `cargo test --all-targets` runs each benchmark once.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::Criterion;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::authn::jwt::Verifier;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.bench.test";
const AUDIENCE: &str = "bench-api";

/// A signing key, its algorithm and `kid`, and its public JWK.
struct Signer {
    name: &'static str,
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn es256_signer() -> Result<Signer, String> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a P-256 key: {e}"))?;
    // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
    let point = kp.public_key_raw();
    let (x, y) = match point {
        [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => return Err("rcgen returned an unexpected P-256 public key encoding".into()),
    };
    Ok(Signer {
        name: "es256",
        kid: "bench-es256",
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(kp.serialized_der()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "bench-es256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }),
    })
}

/// RSA 2048 from `openssl genpkey` (PKCS#8); `Ok(None)` when openssl cannot be run.
fn rs256_signer() -> Result<Option<Signer>, String> {
    let openssl_runs = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !openssl_runs {
        return Ok(None);
    }
    let dir = TempDir::new()?;
    let path = dir.0.join("rs256.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("running openssl genpkey: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let pem =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let der = pem_body(&pem)?;
    let kp = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| format!("ring rejects the openssl RSA key: {e}"))?;
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
    let key = EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| format!("jsonwebtoken rejects the openssl RSA key: {e}"))?;
    Ok(Some(Signer {
        name: "rs256",
        kid: "bench-rs256",
        alg: Algorithm::RS256,
        key,
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "bench-rs256",
            "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e),
        }),
    }))
}

/// The DER bytes of a single-block PEM.
fn pem_body(pem: &str) -> Result<Vec<u8>, String> {
    let b64: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|e| format!("bad PEM from openssl: {e}"))
}

/// A private temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-jwt-bench-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A token like the gateway sees from an IdP: one hour of validity, the usual claims.
fn token(signer: &Signer) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("clock before 1970: {e}"))?
        .as_secs();
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.to_owned());
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "tenant": "bench-tenant",
        "scope": "accounts:read accounts:write", "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(&header, &claims, &signer.key)
        .map_err(|e| format!("signing a {} token: {e}", signer.name))
}

fn bench_signer(c: &mut Criterion, signer: &Signer, jwks_json: &str) -> Result<(), String> {
    let token = token(signer)?;
    let verifier = Verifier::for_bench(ISSUER, AUDIENCE, jwks_json, &["RS256", "ES256"]);
    // Both paths must accept the token before they are timed (and this primes the cache).
    verifier.verify_uncached(&token, None).map_err(|e| {
        format!(
            "verify_uncached refuses a good {} token: {e:?}",
            signer.name
        )
    })?;
    verifier
        .verify(&token, None)
        .map_err(|e| format!("verify refuses a good {} token: {e:?}", signer.name))?;

    let mut group = c.benchmark_group(format!("jwt/{}", signer.name));
    group.bench_function("hit", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&token), None)))
    });
    group.bench_function("miss", |b| {
        b.iter(|| black_box(verifier.verify_uncached(black_box(&token), None)))
    });
    group.finish();
    Ok(())
}

fn run(c: &mut Criterion) -> Result<(), String> {
    let es = es256_signer()?;
    let rs = rs256_signer()?;
    if rs.is_none() {
        eprintln!("jwt bench: `openssl` is not available, skipping the RS256 benchmarks");
    }
    let keys: Vec<&Value> = std::iter::once(&es.jwk)
        .chain(rs.as_ref().map(|s| &s.jwk))
        .collect();
    let jwks_json = json!({ "keys": keys }).to_string();
    bench_signer(c, &es, &jwks_json)?;
    if let Some(rs) = &rs {
        bench_signer(c, rs, &jwks_json)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let result = run(&mut c);
    c.final_summary();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jwt bench: {e}");
            ExitCode::FAILURE
        }
    }
}
