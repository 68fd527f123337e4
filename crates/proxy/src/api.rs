//! The HTTPS API served on the stream port to connections that negotiate `http/1.1` or no
//! ALPN protocol at all (as the GoDoxy agent routes them):
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | `200 ok` |
//! | `GET /metrics` | the metrics in the OpenMetrics text format |
//! | `GET /godoxy/agent/info` | `200`, JSON `{"version", "name", "runtime"}`: what a GoDoxy server reads when it adds an agent |
//! | any other `/godoxy/agent/...` path | `404` with a JSON error |
//!
//! Every connection is bounded ([`ApiSettings`]): a request head must arrive within the
//! header timeout, a keep-alive connection with no request for the idle timeout is closed, a
//! request head larger than the size limit is refused with `431`, and at most
//! `max_connections` API connections are open at once (apart from the tunnel limits). At
//! shutdown an idle connection closes at once and a busy one finishes its response.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The content type of `/metrics` (OpenMetrics text, which Prometheus reads).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path prefix of the GoDoxy agent API.
pub const AGENT_API_PREFIX: &str = "/godoxy/agent";

/// The `runtime` this server reports to GoDoxy in `/godoxy/agent/info`.
///
/// GoDoxy's agent reports the container runtime whose socket it proxies (`docker` or
/// `podman`). GoDoxy stores the value and reads it only when the agent serves as a Docker
/// provider; routes with `agent: NAME` use the stream protocol and ignore it. `docker` is the
/// value GoDoxy itself assumes for agents that predate the field, so it is the one a GoDoxy
/// server of any version accepts. streamproxy does not proxy a container socket: a Docker
/// provider pointed at it gets `404`s.
pub const AGENT_RUNTIME: &str = "docker";

/// The version reported to GoDoxy, in its `vMAJOR.MINOR.PATCH` form.
pub const AGENT_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

/// Limits and identity of the HTTPS API. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiSettings {
    /// The agent name reported in `/godoxy/agent/info`. Default `"streamproxy"` (the command
    /// sets the host name).
    pub agent_name: String,
    /// How long a connection has to deliver a complete request head, counted from the end of
    /// the handshake or of the previous response. Default 10 s.
    pub header_timeout: Duration,
    /// A keep-alive connection that sends nothing for this long is closed. Default 5 s. The
    /// header timeout also bounds it (a longer value has the header timeout's effect).
    pub idle_timeout: Duration,
    /// Most API connections open at once; more are closed after the handshake and counted.
    /// Default 64.
    pub max_connections: usize,
    /// Largest request head, in bytes (at least 8 KiB); larger ones get `431`. Default 16 KiB.
    pub max_request_bytes: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            agent_name: "streamproxy".to_owned(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 64,
            max_request_bytes: 16 * 1024,
        }
    }
}

impl ApiSettings {
    /// Sets the agent name.
    pub fn agent_name(mut self, name: impl Into<String>) -> Self {
        self.agent_name = name.into();
        self
    }

    /// Sets the header timeout.
    pub fn header_timeout(mut self, d: Duration) -> Self {
        self.header_timeout = d;
        self
    }

    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets the maximum of API connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the largest request head.
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }
}

/// How one API connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiEnd {
    /// The client closed it, or it was closed after its last response.
    Closed,
    /// No request for the idle timeout.
    Idle,
    /// Shutdown began.
    Shutdown,
    /// An HTTP error: a malformed request, a header timeout, a broken connection.
    Error(hyper::Error),
}

/// What `/metrics` shows: the server's [`Metrics`], or a client's forwarder counters.
pub trait Exposition: Send + Sync + 'static {
    /// The metrics in the OpenMetrics text format.
    fn encode(&self) -> String;
}

impl Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

/// Serves HTTP/1.1 requests on one already-secured connection until the client closes it, it
/// goes idle, it breaks a limit, or `shutdown` is cancelled (then an idle connection closes at
/// once and a busy one after its response).
pub async fn serve_api<S>(
    stream: S,
    metrics: Arc<Metrics>,
    settings: &ApiSettings,
    shutdown: CancellationToken,
) -> ApiEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = AgentInfo::new(&settings.agent_name);
    serve_http(stream, metrics, Some(info), settings, shutdown).await
}

/// [`serve_api`] for the plain status listener: `/health` and `/metrics` only.
pub(crate) async fn serve_status<S>(
    stream: S,
    metrics: Arc<dyn Exposition>,
    settings: &ApiSettings,
    shutdown: CancellationToken,
) -> ApiEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_http(stream, metrics, None, settings, shutdown).await
}

async fn serve_http<S, M>(
    stream: S,
    metrics: Arc<M>,
    info: Option<AgentInfo>,
    settings: &ApiSettings,
    shutdown: CancellationToken,
) -> ApiEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Exposition + ?Sized,
{
    let activity = Arc::new(Activity::default());
    let info = Arc::new(info);
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req| {
            let busy = Busy::enter(&activity);
            let response = route(&req, &*metrics, info.as_ref().as_ref());
            drop(busy);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_request_bytes.max(8 * 1024))
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut end = None;
    loop {
        let seen = activity.reads.load(Ordering::Relaxed);
        tokio::select! {
            result = conn.as_mut() => {
                return match (result, end) {
                    (Err(e), _) => ApiEnd::Error(e),
                    (Ok(()), Some(end)) => end,
                    (Ok(()), None) => ApiEnd::Closed,
                };
            }
            () = shutdown.cancelled(), if end.is_none() => {
                end = Some(ApiEnd::Shutdown);
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(settings.idle_timeout), if end.is_none() => {
                if activity.reads.load(Ordering::Relaxed) == seen
                    && activity.busy.load(Ordering::Relaxed) == 0
                {
                    end = Some(ApiEnd::Idle);
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What the idle watch looks at: reads that brought bytes, and requests being answered.
#[derive(Debug, Default)]
struct Activity {
    reads: AtomicU64,
    busy: AtomicUsize,
}

/// A request being answered; the connection is not idle while one exists.
struct Busy<'a>(&'a Activity);

impl<'a> Busy<'a> {
    fn enter(activity: &'a Activity) -> Busy<'a> {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(activity)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that counts the reads that brought bytes.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The body of `/godoxy/agent/info`, encoded once per connection.
struct AgentInfo {
    json: Bytes,
}

impl AgentInfo {
    fn new(name: &str) -> AgentInfo {
        let value = serde_json::json!({
            "version": AGENT_VERSION,
            "name": name,
            "runtime": AGENT_RUNTIME,
        });
        AgentInfo {
            json: Bytes::from(value.to_string()),
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn route<M: Exposition + ?Sized>(
    req: &Request<Incoming>,
    metrics: &M,
    info: Option<&AgentInfo>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let get = req.method() == Method::GET;
    // The agent API exists only where there is agent information (the shared port).
    let agent_path = info.and_then(|_| {
        path.strip_prefix(AGENT_API_PREFIX)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    match (get, path, agent_path) {
        (true, "/health", _) => respond(StatusCode::OK, TEXT, Bytes::from_static(b"ok")),
        (true, "/metrics", _) => respond(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            Bytes::from(metrics.encode()),
        ),
        (true, _, Some("/info")) => match info {
            Some(info) => respond(StatusCode::OK, JSON, info.json.clone()),
            None => json_error(StatusCode::NOT_FOUND, "not found"),
        },
        (false, "/health" | "/metrics", _) | (false, _, Some("/info")) => {
            let mut r = if agent_path.is_some() {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            } else {
                respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    TEXT,
                    Bytes::from_static(b"method not allowed\n"),
                )
            };
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET"),
            );
            r
        }
        (_, _, Some(_)) => json_error(StatusCode::NOT_FOUND, "not found"),
        _ => respond(
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found\n"),
        ),
    }
}

fn json_error(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, JSON, Bytes::from(body))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn start(
        settings: ApiSettings,
    ) -> (
        DuplexStream,
        CancellationToken,
        tokio::task::JoinHandle<ApiEnd>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { serve_api(server, metrics, &settings, stop).await });
        (client, shutdown, task)
    }

    async fn request(method: &str, path: &str) -> String {
        let (mut client, _shutdown, task) = start(ApiSettings::default().agent_name("edge-1"));
        client
            .write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        client.read_to_string(&mut response).await.expect("read");
        let end = task.await.expect("join");
        assert!(matches!(end, ApiEnd::Closed), "{end:?}");
        response
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[tokio::test]
    async fn health_answers_ok() {
        let r = request("GET", "/health").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.ends_with("\r\n\r\nok"), "{r}");
    }

    #[tokio::test]
    async fn metrics_answers_prometheus_text() {
        let r = request("GET", "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("# TYPE streamproxy_tunnels counter"), "{r}");
        assert!(r.contains("application/openmetrics-text"), "{r}");
    }

    #[tokio::test]
    async fn agent_info_is_the_json_godoxy_reads() {
        let r = request("GET", "/godoxy/agent/info").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{r}"
        );
        let info: serde_json::Value = serde_json::from_str(body(&r)).expect("json");
        assert_eq!(info["name"], "edge-1");
        assert_eq!(info["runtime"], AGENT_RUNTIME);
        let version = info["version"].as_str().expect("version string");
        let numbers: Vec<&str> = version
            .strip_prefix('v')
            .expect("v prefix")
            .split('.')
            .collect();
        assert_eq!(numbers.len(), 3, "{version}");
        assert!(
            numbers.iter().all(|n| n.parse::<u32>().is_ok()),
            "{version}"
        );
    }

    #[tokio::test]
    async fn other_agent_paths_are_json_not_found() {
        for path in [
            "/godoxy/agent/version",
            "/godoxy/agent/",
            "/godoxy/agent/info/x",
        ] {
            let r = request("GET", path).await;
            assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
            let e: serde_json::Value = serde_json::from_str(body(&r)).expect("json");
            assert_eq!(e["error"], "not found");
        }
    }

    #[tokio::test]
    async fn a_wrong_method_is_405_with_allow() {
        for path in ["/godoxy/agent/info", "/health"] {
            let r = request("POST", path).await;
            assert!(r.starts_with("HTTP/1.1 405"), "{path}: {r}");
            assert!(r.to_ascii_lowercase().contains("allow: get"), "{path}: {r}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let r = request("GET", "/admin").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let (mut client, _shutdown, task) = start(ApiSettings::default());
        let long = "a".repeat(64 * 1024);
        let _ = client
            .write_all(format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let mut response = Vec::new();
        let _ = client.read_to_end(&mut response).await;
        let r = String::from_utf8_lossy(&response);
        assert!(
            r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 414"),
            "{r}"
        );
        assert!(matches!(task.await.expect("join"), ApiEnd::Error(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_closed_when_idle() {
        let (mut client, _shutdown, task) = start(ApiSettings::default());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty());
        assert!(matches!(task.await.expect("join"), ApiEnd::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_head_hits_the_header_timeout() {
        let settings = ApiSettings::default()
            .idle_timeout(Duration::from_secs(1))
            .header_timeout(Duration::from_secs(3));
        let (mut client, _shutdown, task) = start(settings);
        // One byte every half second keeps the idle watch quiet; the header timeout ends it.
        let writer = tokio::spawn(async move {
            for b in b"GET /health HTTP/1.1\r\nHost: slow\r\n"
                .iter()
                .cycle()
                .take(200)
            {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let end = task.await.expect("join");
        assert!(
            matches!(end, ApiEnd::Error(ref e) if e.is_timeout()),
            "{end:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_closes_at_shutdown() {
        let (mut client, shutdown, task) = start(
            ApiSettings::default()
                .idle_timeout(Duration::from_secs(3600))
                .header_timeout(Duration::from_secs(3600)),
        );
        client
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = client.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("closed at once")
            .expect("join");
        assert!(matches!(end, ApiEnd::Shutdown), "{end:?}");
    }
}
