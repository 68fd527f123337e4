//! The HTTPS API served on the stream port to clients that negotiate `http/1.1`:
//! `GET /health` answers `200 ok`, `GET /metrics` the metrics in the Prometheus text format.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::Metrics;

/// The content type of `/metrics` (OpenMetrics text, which Prometheus reads).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves HTTP/1.1 requests on one already-secured connection until the client closes it.
pub async fn serve_api<S>(stream: S, metrics: Arc<Metrics>) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let metrics = Arc::clone(&metrics);
        async move { Ok::<_, Infallible>(route(&req, &metrics)) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
}

fn route(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => (StatusCode::OK, "text/plain; charset=utf-8", "ok".into()),
        (&Method::GET, "/metrics") => (StatusCode::OK, METRICS_CONTENT_TYPE, metrics.encode()),
        (_, "/health" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(path: &str) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(serve_api(server, metrics));
        client
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        client.read_to_string(&mut response).await.expect("read");
        task.await.expect("join").expect("serve");
        response
    }

    #[tokio::test]
    async fn health_answers_ok() {
        let r = get("/health").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.ends_with("\r\n\r\nok"), "{r}");
    }

    #[tokio::test]
    async fn metrics_answers_prometheus_text() {
        let r = get("/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("# TYPE streamproxy_tunnels counter"), "{r}");
        assert!(r.contains("application/openmetrics-text"), "{r}");
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let r = get("/admin").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }
}
