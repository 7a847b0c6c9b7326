//! The demo backend: the three services of the reference scenario (accounts, payments,
//! reports), answering realistic JSON and echoing the request id they received (in the
//! `X-Backend-Saw-Request-Id` header and the `request_id` field).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn owner_of(account: &str) -> (&'static str, &'static str) {
    match account {
        "acc-100" | "acc-101" => ("alice@acme", "acme"),
        "acc-200" => ("bob@globex", "globex"),
        _ => ("unknown", "unknown"),
    }
}

fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = header::HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-backend-saw-request-id", v);
    }
    res
}

/// Answers one request of the reference scenario.
pub async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let res = match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "accounts", id]) => {
            let (owner, tenant) = owner_of(id);
            json_response(
                StatusCode::OK,
                &json!({
                    "account_id": id, "owner": owner, "tenant": tenant, "currency": "EUR",
                    "balance": "15230.75", "available": "14980.75", "status": "active",
                    "iban_last4": "4432", "request_id": rid,
                }),
                &rid,
            )
        }
        (&Method::GET, ["v1", "accounts", id, "transactions"]) => json_response(
            StatusCode::OK,
            &json!({
                "account_id": id,
                "transactions": [
                    {"id": "tx-9001", "amount": "-125.40", "currency": "EUR", "counterparty": "ACME Supplies", "booked_at": "2026-11-24T09:12:00Z"},
                    {"id": "tx-9002", "amount": "2500.00", "currency": "EUR", "counterparty": "Payroll", "booked_at": "2026-11-25T06:00:00Z"}
                ],
                "request_id": rid,
            }),
            &rid,
        ),
        (&Method::POST, ["v1", "payments"]) => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            match serde_json::from_slice::<Value>(&body) {
                Ok(p) => json_response(
                    StatusCode::CREATED,
                    &json!({
                        "payment_id": format!("pay-{}", uuid::Uuid::now_v7().simple()),
                        "status": "accepted",
                        "from_account": p.get("from_account"), "to_account": p.get("to_account"),
                        "amount": p.get("amount"), "currency": p.get("currency"),
                        "request_id": rid,
                    }),
                    &rid,
                ),
                Err(_) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "body must be JSON", "request_id": rid}),
                    &rid,
                ),
            }
        }
        (&Method::GET, ["v1", "payments", id]) => json_response(
            StatusCode::OK,
            &json!({"payment_id": id, "status": "settled", "amount": "125.40", "currency": "EUR", "request_id": rid}),
            &rid,
        ),
        (&Method::GET, ["v1", "reports", tenant, "daily"]) => json_response(
            StatusCode::OK,
            &json!({"tenant_id": tenant, "date": "2026-11-24", "payments": 1284, "volume": "981234.10", "currency": "EUR", "request_id": rid}),
            &rid,
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found", "request_id": rid}),
            &rid,
        ),
    };
    Ok(res)
}

/// Answers every request with the same small account JSON: constant work per request, whatever
/// the request carries, so a benchmark compares the proxies and not the backend.
pub async fn fixed(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    const BODY: &[u8] = br#"{"account_id":"acc-100","owner":"alice@acme","currency":"EUR","balance":"15230.75","status":"active"}"#;
    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// Serves [`fixed`] on `listener` forever (HTTP/1.1 and h2c).
pub async fn serve_fixed(listener: TcpListener) {
    serve_with(listener, fixed).await;
}

/// Serves [`handle`] on `listener` forever (HTTP/1.1 and h2c).
pub async fn serve(listener: TcpListener) {
    serve_with(listener, handle).await;
}

async fn serve_with<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and serves the demo backend in a background task; returns the bound address.
///
/// # Errors
/// When the address cannot be bound.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(local)
}
