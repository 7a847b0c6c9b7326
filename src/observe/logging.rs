//! JSON logs via tracing. Every line of a request carries its `request_id` (the request span).

use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber at `level` (an `EnvFilter` directive; `RUST_LOG` wins).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .try_init();
}
