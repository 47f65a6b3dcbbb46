//! The integration-test harness: real backends, the real gateway (in-process or as the real
//! binary) and real HTTP clients, all on ephemeral loopback ports. Readiness is awaited by
//! polling, never by sleeping a fixed time.
#![allow(dead_code)]

pub mod browser;
pub mod pebble;
pub mod pki;

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// What a backend received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// A real HTTP/1.1 + h2c server on a loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The accept loop and every connection task, for `kill`.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    /// A backend whose answers come from `handler`.
    pub async fn serve<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Backend::serve_with(handler, None).await
    }

    /// A backend serving HTTPS with `tls` (HTTP/1.1 or h2, as its ALPN allows).
    pub async fn serve_tls<F, Fut>(tls: Arc<rustls::ServerConfig>, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Backend::serve_with(handler, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn serve_with<F, Fut>(handler: F, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let conn_tasks = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
                conn_tasks.lock().expect("tasks lock").push(conn.abort_handle());
            }
        });
        tasks.lock().expect("tasks lock").push(accept.abort_handle());
        Backend { addr, connections, seen: Arc::new(Mutex::new(Vec::new())), tasks }
    }

    /// Dies at once: stops listening and drops every open connection, mid-request or not.
    pub fn kill(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }

    /// A backend that records each request (body included) and answers with `respond`.
    pub async fn recording<F>(respond: F) -> Backend
    where
        F: Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let respond = Arc::new(respond);
        let mut backend = Backend::serve(move |req: Request<Incoming>| {
            let log = log.clone();
            let respond = respond.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                let s = Seen {
                    method: parts.method,
                    uri: parts.uri.to_string(),
                    version: parts.version,
                    headers: parts.headers,
                    body,
                };
                let resp = respond(&s);
                log.lock().expect("seen lock").push(s);
                resp
            }
        })
        .await;
        backend.seen = seen;
        backend
    }

    /// Records requests and answers 200 with the request body and an `x-backend` header.
    pub async fn echo() -> Backend {
        Backend::recording(|s| {
            let mut r = Response::new(full(s.body.clone()));
            r.headers_mut().insert("x-backend", "echo".parse().expect("value"));
            r
        })
        .await
    }

    /// Answers 200 with a fixed text, recording requests.
    pub async fn text(text: &'static str) -> Backend {
        Backend::recording(move |_| Response::new(full(text))).await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the backend received a request")
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// A TCP server that hands each accepted connection to `f` (for misbehaving upstreams).
pub async fn raw_backend<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw backend");
    let addr = listener.local_addr().expect("addr");
    let f = Arc::new(f);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move { f(stream).await });
        }
    });
    addr
}

/// A keep-alive HTTP/1.1 upstream that holds its first `burst` requests until all of them have
/// arrived (so a gateway must open `burst` connections to it at once), then answers every
/// request `200 ok`; it counts the connections opened and those the gateway closed.
pub struct HeldBurst {
    pub addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    closed: tokio::sync::watch::Sender<usize>,
}

impl HeldBurst {
    pub async fn start(burst: usize) -> HeldBurst {
        use tokio::io::AsyncWriteExt;
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = tokio::sync::watch::Sender::new(0usize);
        let arrived = Arc::new(AtomicUsize::new(0));
        let all_arrived = Arc::new(tokio::sync::Notify::new());
        let (o, c) = (opened.clone(), closed.clone());
        let addr = raw_backend(move |mut s| {
            let (opened, closed, arrived, all_arrived) = (o.clone(), c.clone(), arrived.clone(), all_arrived.clone());
            async move {
                opened.fetch_add(1, Ordering::SeqCst);
                while read_head(&mut s).await {
                    let waiting = all_arrived.notified();
                    let n = arrived.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == burst {
                        all_arrived.notify_waiters();
                    } else if n < burst {
                        waiting.await;
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                }
                closed.send_modify(|n| *n += 1);
            }
        })
        .await;
        HeldBurst { addr, opened, closed }
    }

    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        *self.closed.borrow()
    }

    /// Waits (up to 10 s) until the gateway has closed `n` of the connections; false if not.
    pub async fn wait_closed(&self, n: usize) -> bool {
        let mut closed = self.closed.subscribe();
        tokio::time::timeout(Duration::from_secs(10), closed.wait_for(|c| *c >= n)).await.is_ok()
    }
}

/// A keep-alive HTTP/1.1 server writing, for each request head it reads (bodies are not
/// read), the bytes `answer` picks for it: responses exactly as a test spells them.
pub async fn scripted_backend(answer: fn(&[u8]) -> &'static [u8]) -> SocketAddr {
    raw_backend(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let mut head = Vec::new();
            if !read_until(&mut s, &mut head, b"\r\n\r\n").await || s.write_all(answer(&head)).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Config for one upstream `up` with a single target and one route `r` to it. `upstream`
/// adds keys to the upstream (`", timeouts: { connect: 1s }"`); `route` is the route's match
/// and any further keys (`ALL` for every path).
pub fn single_route(target: impl std::fmt::Display, upstream: &str, route: &str) -> String {
    format!(
        "upstreams: {{ up: {{ targets: [{{ address: {target} }}]{upstream} }} }}\nroutes: [{{ name: r, upstream: up, {route} }}]\n"
    )
}

/// The match of a route that takes every request.
pub const ALL: &str = "match: { path_prefix: / }";

/// Reads one HTTP/1 request head from a raw connection; false if the peer closed first.
pub async fn read_head(s: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Reads until `needle` has arrived (or the connection ends, or 10 s pass).
pub async fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub running: ferroway::server::Running,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Starts the gateway from YAML. The listener is added (on port 0) unless the YAML has one;
/// the access log is off unless the YAML configures it.
pub async fn gateway(yaml: &str) -> TestGateway {
    let mut text = String::new();
    if !yaml.contains("listeners:") {
        text.push_str("listeners: [{ name: public, address: 127.0.0.1:0 }]\n");
    }
    if !yaml.contains("access_log:") {
        text.push_str("access_log: { output: off }\n");
    }
    text.push_str(yaml);
    let config =
        ferroway::config::load_str(&text, Path::new("test.yaml"), Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let running = ferroway::server::start(&config).await.expect("gateway starts");
    let addr = running.listeners()[0].1;
    TestGateway { addr, running }
}

/// Writes `yaml` to `path` and starts a gateway that reloads from it.
pub async fn gateway_from_file(path: &Path, yaml: &str) -> TestGateway {
    std::fs::write(path, yaml).expect("write config");
    let config = ferroway::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let running = ferroway::server::start_with_file(&config, Some(path.to_owned())).await.expect("gateway starts");
    let addr = running.listeners()[0].1;
    TestGateway { addr, running }
}

/// A client's view of a response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub async fn send_with(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Got {
    let resp = client.request(req).await.expect("request completes");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body completes");
    let trailers = collected.trailers().cloned();
    Got { status: parts.status, version: parts.version, headers: parts.headers, body: collected.to_bytes(), trailers }
}

pub async fn send(req: Request<Body>) -> Got {
    send_with(&client(), req).await
}

pub async fn get(url: &str) -> Got {
    send(Request::get(url).body(full("")).expect("request")).await
}

/// The value of the series `name` (exactly, labels included) in the admin listener's
/// `/metrics` at `admin`; panics if it is not there.
pub async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let text = get(&format!("http://{admin}/metrics")).await.text();
    let line = text.lines().find(|l| l.rsplit_once(' ').map(|(n, _)| n) == Some(name));
    let line = line.unwrap_or_else(|| panic!("{name} in {text}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("a number in {line}"))
}

/// Writes raw bytes to `addr` and reads the answer until the server closes or `limit` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The address in a gateway log line announcing a (non-admin) listener. Off a terminal the
/// gateway logs JSON objects; on one, `key=value` text.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "listening" || v["listener"] == "admin" {
            return None;
        }
        return v["address"].as_str()?.parse().ok();
    }
    if line.contains("listener=admin") {
        return None;
    }
    line.split("address=").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// The real `ferroway` binary, started with a config file.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The config file the process runs from (rewrite it and send SIGHUP to reload).
    pub config: std::path::PathBuf,
    /// Every line the process has logged so far.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    pub fn start(yaml: &str) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferroway.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferroway"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferroway");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log lock").push(line.clone());
                if let Some(addr) = listening_address(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the gateway reports its listening address");
        GatewayProcess { child, addr, config: path, log, _dir: dir }
    }

    /// Every line the process has logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits (polling) until the process has logged `count` lines containing `text`.
    pub fn wait_for_log(&self, text: &str, count: usize) {
        let start = std::time::Instant::now();
        loop {
            let seen = self.log.lock().expect("log lock").iter().filter(|l| l.contains(text)).count();
            if seen >= count {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no log line {text:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the process so far, in bytes (Linux).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM present");
        kib * 1024
    }

    pub fn signal(&self, sig: &str) {
        let status =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that `text` is valid Prometheus exposition, by promtool from Debian's prometheus
/// package (installed by scripts/test).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write metrics");
    let out = promtool.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real `redis-server` (Debian's package; `scripts/test` installs it) on a free loopback
/// port, with persistence off. Killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = RedisServer { port, child: None, _dir: dir };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        let bin = ["redis-server", "/usr/bin/redis-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").stdout(Stdio::null()).status().is_ok())
            .expect("redis-server is installed (scripts/test installs Debian's redis-server)");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = std::time::Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG")) {
                    return;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TLS connection to the gateway as a real client makes it: `sni` as server name.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// The certificate the server presented on `stream`.
pub fn peer_cert(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> rustls::pki_types::CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("server certificate").clone().into_owned()
}

/// One request over an established TLS connection, in the protocol ALPN chose.
pub async fn send_tls(stream: tokio_rustls::client::TlsStream<TcpStream>, req: Request<Body>) -> Got {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("h2 response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("h1 response")
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body completes");
    let trailers = collected.trailers().cloned();
    Got { status: parts.status, version: parts.version, headers: parts.headers, body: collected.to_bytes(), trailers }
}
