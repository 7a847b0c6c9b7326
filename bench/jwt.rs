//! JWT verification cost: a verified-token cache hit versus a miss (signature check).
//! Placeholder until the verifier lands; see bench/README.md.

fn main() {}
