//! The audit log: one JSON line per denied request and per allowed write (non-GET/HEAD), written
//! off the request path by a dedicated thread behind a bounded queue. A full queue drops the
//! record and counts it — or, when the audit is `required`, the write it would have recorded is
//! refused (503), so no write happens unaudited. Records carry identities and object ids, never
//! a token, a key or a body.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::observe::metrics::Metrics;

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// Validated audit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Where records go (`None`: no audit log).
    pub sink: Option<AuditSink>,
    /// Queue length.
    pub queue: usize,
    /// Refuse writes that cannot be audited.
    pub required: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            sink: None,
            queue: 10_000,
            required: false,
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339 UTC time, seconds precision plus milliseconds.
    pub time: String,
    /// The request id.
    pub request_id: String,
    /// The token's subject.
    pub subject: Option<String>,
    /// The caller's tenant.
    pub tenant: Option<String>,
    /// SHA-256 fingerprint of the caller's client certificate.
    pub peer_fingerprint: Option<String>,
    /// The route.
    pub route: String,
    /// The method.
    pub method: String,
    /// Object ids the ownership rules looked at.
    pub object_ids: Vec<String>,
    /// `allow`, `deny` or `report` (allowed, but a report-only rule would have denied).
    pub decision: &'static str,
    /// The rule that decided (`scopes`, `ownership`, ...; `all` when everything passed).
    pub rule: String,
    /// Why, in words.
    pub reason: String,
}

/// The audit log handle.
#[derive(Debug)]
pub struct Audit {
    tx: Option<SyncSender<Record>>,
    /// Refuse writes that cannot be audited.
    pub required: bool,
    metrics: Metrics,
}

impl Audit {
    /// Starts the writer thread for `settings`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn start(settings: &AuditSettings, metrics: &Metrics) -> Result<Self, String> {
        let Some(sink) = settings.sink.clone() else {
            return Ok(Self {
                tx: None,
                required: false,
                metrics: metrics.clone(),
            });
        };
        let (tx, rx) = sync_channel::<Record>(settings.queue.max(1));
        let m = metrics.clone();
        let path = match &sink {
            AuditSink::File(p) => Some(p.clone()),
            AuditSink::Stdout => None,
        };
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                // Opened on the writer thread: a FIFO nobody reads blocks here, not a request.
                let mut out: Box<dyn Write> = match &path {
                    None => Box::new(std::io::stdout()),
                    Some(p) => match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                    {
                        Ok(f) => Box::new(f),
                        Err(e) => {
                            tracing::error!(error = %e, path = %p.display(), "cannot open the audit log");
                            return;
                        }
                    },
                };
                while let Ok(record) = rx.recv() {
                    let mut line = serde_json::to_vec(&record).unwrap_or_default();
                    line.push(b'\n');
                    match out.write_all(&line).and_then(|()| out.flush()) {
                        Ok(()) => m.audit.with_label_values(&["written"]).inc(),
                        Err(e) => {
                            m.audit.with_label_values(&["failed"]).inc();
                            tracing::error!(error = %e, "audit write failed");
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Self {
            tx: Some(tx),
            required: settings.required,
            metrics: metrics.clone(),
        })
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `record`; false when the queue was full (the drop is counted).
    pub fn push(&self, record: Record) -> bool {
        let Some(tx) = &self.tx else { return true };
        match tx.try_send(record) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.audit.with_label_values(&["dropped"]).inc();
                false
            }
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(0);
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        d.subsec_millis()
    )
}
