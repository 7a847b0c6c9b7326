//! Integration tests: the gateway in-process on port 0 (or as a process, for signals) with real
//! backends on port 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod authz;
mod cli;
mod correlation;
mod errors;
mod explain;
mod hygiene;
mod jwt;
mod limits;
mod lookup;
mod observe;
mod proxy;
mod ratelimit;
mod reload;
mod tls;
