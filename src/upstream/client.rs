//! The pooled HTTP client of one upstream, by its `protocol` and `tls`: HTTP/1.1 over TCP on
//! the gateway's own client (`upstream::h1`); HTTP/2 (prior knowledge, or chosen by ALPN) and
//! anything over rustls on hyper-util's. With HTTP/2 one connection per target carries many
//! concurrent streams; with HTTP/1.1 the pool keeps one connection per request in flight.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::time::Instant;

use super::Target;
use super::balance::TargetState;
use super::connector::CountingConnector;
use crate::config::{UpstreamDef, UpstreamProtocol, UpstreamTlsDef};
use crate::proxy::body::RequestBody;
use crate::proxy::error::ErrorKind;

pub enum UpstreamClient {
    /// Plain HTTP/1.1: the own client and pool.
    H1(super::h1::Client),
    Plain(Client<CountingConnector<HttpConnector>, RequestBody>),
    Tls(Client<CountingConnector<HttpsConnector<HttpConnector>>, RequestBody>),
}

impl UpstreamClient {
    /// `open` counts connections per target authority (see [`CountingConnector`]); `pools` are
    /// the targets' states, in whose idle lists the own HTTP/1.1 client keeps its connections.
    pub fn new(
        def: &UpstreamDef,
        open: Arc<HashMap<String, Arc<AtomicUsize>>>,
        pools: &[Arc<TargetState>],
    ) -> Result<UpstreamClient, String> {
        if def.tls.is_none() && def.protocol == UpstreamProtocol::Http1 {
            return Ok(UpstreamClient::H1(super::h1::Client::new(def.timeouts.connect, def.timeouts.idle, pools)));
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(def.timeouts.connect));
        http.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(def.timeouts.idle)
            .pool_max_idle_per_host(usize::try_from(def.max_idle_per_target).unwrap_or(usize::MAX))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_preserve_header_case(false)
            .http2_only(matches!(def.protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2))
            // A dead HTTP/2 connection carries every request of its target: find out with pings.
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .http2_keep_alive_while_idle(false);
        match &def.tls {
            None => {
                http.enforce_http(true);
                Ok(UpstreamClient::Plain(builder.build(CountingConnector::new(http, open))))
            }
            Some(tls) => {
                http.enforce_http(false);
                let alpn: Vec<Vec<u8>> = match def.protocol {
                    UpstreamProtocol::H2 => vec![b"h2".to_vec()],
                    UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                    UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![b"http/1.1".to_vec()],
                };
                let config = client_config(tls, alpn)?;
                let resolver: Arc<dyn ResolveServerName + Send + Sync> = match &tls.server_name {
                    Some(name) => {
                        let name =
                            ServerName::try_from(name.clone()).map_err(|e| format!("server_name {name}: {e}"))?;
                        Arc::new(FixedServerNameResolver::new(name))
                    }
                    None => Arc::new(DefaultServerNameResolver::default()),
                };
                let https = HttpsConnector::new(http, config, true, resolver);
                Ok(UpstreamClient::Tls(builder.build(CountingConnector::new(https, open))))
            }
        }
    }

    /// Whether [`request`](Self::request) sends `lines`: only the own HTTP/1.1 client does.
    pub fn takes_lines(&self) -> bool {
        matches!(self, UpstreamClient::H1(_))
    }

    /// Sends the request `head` with `body` to `target` and waits for the response head. With
    /// a `raw` policy, the own HTTP/1.1 client may keep a plain response's fields as lines in
    /// its body ([`super::h1::RawFields`]) for the caller to write out. `lines` are more request
    /// fields, already `name: value` CRLF lines, sent after the map's (empty unless
    /// [`takes_lines`](Self::takes_lines)).
    ///
    /// The head is lent, not a `Request`: the own client encodes it where it lies, and only
    /// hyper's gets a `Request` built (a `Request` moved down the awaits of a try was copied
    /// six times, 368 bytes each).
    pub async fn request(
        &self,
        target: &Target,
        head: OutHead<'_>,
        body: RequestBody,
        raw: Option<&super::h1::FieldPolicy>,
        lines: &[u8],
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, SendError> {
        debug_assert!(lines.is_empty() || self.takes_lines(), "lines for a client that does not send them");
        let sent = match self {
            UpstreamClient::H1(c) => {
                return c
                    .send(target, &head, body, raw, lines, deadline)
                    .await
                    .map(|r| r.map(UpstreamBody::H1))
                    .map_err(SendError::Gateway);
            }
            UpstreamClient::Plain(c) => c.request(head.into_request(target, self.scheme(), body)?),
            UpstreamClient::Tls(c) => c.request(head.into_request(target, self.scheme(), body)?),
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(sent) => sent.map(|r| r.map(UpstreamBody::Hyper)).map_err(SendError::Hyper),
            Err(_elapsed) => Err(SendError::Gateway(ErrorKind::UpstreamResponseTimeout)),
        }
    }

    /// The scheme of request URIs: `https` makes the connector use TLS.
    pub fn scheme(&self) -> Scheme {
        match self {
            UpstreamClient::H1(_) | UpstreamClient::Plain(_) => Scheme::HTTP,
            UpstreamClient::Tls(_) => Scheme::HTTPS,
        }
    }
}

/// A request head on its way to a target, lent by the caller for one try.
pub struct OutHead<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a PathAndQuery,
    /// The fields; hyper's client takes them (`take`: this is the last try) or a copy.
    pub headers: &'a mut HeaderMap,
    pub take: bool,
    pub host: HostField,
}

/// Which Host goes up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostField {
    /// The one in the fields (the target's when there is none).
    Fields,
    /// The target's, whatever the fields hold (`host_header: upstream`).
    Target,
    /// None: over HTTP/2 a Host differing from `:authority` (the target, which keys the
    /// pool) must not be sent (RFC 9113 §8.3.1); the client's host travels in
    /// X-Forwarded-Host.
    Omit,
}

impl OutHead<'_> {
    /// The `Request` hyper's client sends: the target's authority in the URI, and Host by
    /// the upstream's protocol.
    fn into_request(
        self,
        target: &Target,
        scheme: Scheme,
        body: RequestBody,
    ) -> Result<Request<RequestBody>, SendError> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme);
        uri.authority = Some(target.authority.clone());
        uri.path_and_query = Some(self.path_and_query.clone());
        let mut headers = if self.take { std::mem::take(self.headers) } else { self.headers.clone() };
        match self.host {
            HostField::Fields => {}
            HostField::Target => {
                headers.insert(http::header::HOST, target.host_value.clone());
            }
            HostField::Omit => {
                headers.remove(http::header::HOST);
            }
        }
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = http::Uri::from_parts(uri).map_err(|_| SendError::Gateway(ErrorKind::BadRequest))?;
        *req.version_mut() = http::Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// Why a request got no response head.
pub enum SendError {
    Hyper(hyper_util::client::legacy::Error),
    /// The own client's failures come typed already.
    Gateway(ErrorKind),
}

/// An upstream's response body, from whichever client read it.
pub enum UpstreamBody {
    Hyper(Incoming),
    /// Boxed: a response is moved several times on its way out, and the own client's body
    /// (its connection and read buffer with it) is 200 bytes inline.
    H1(Box<super::h1::Body>),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H1(b) => Pin::new(&mut **b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::H1(b) => b.size_hint(),
        }
    }
}

impl UpstreamBody {
    /// The own client's body (the one that can be spliced, see `h1::Body::spliceable`).
    #[cfg(target_os = "linux")]
    pub fn own(&mut self) -> Option<&mut super::h1::Body> {
        match self {
            UpstreamBody::H1(b) => Some(&mut **b),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

/// A rustls client config for `tls`, offering `alpn`.
pub fn client_config(tls: &UpstreamTlsDef, alpn: Vec<Vec<u8>>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.verify {
        let roots = match &tls.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in ca.iter() {
                    roots.add(c.clone()).map_err(|e| format!("tls.ca: {e}"))?;
                }
                Arc::new(roots)
            }
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let mut config = match &tls.client_cert {
        Some(pair) => builder
            .with_client_auth_cert(pair.0.clone(), pair.1.clone_key())
            .map_err(|e| format!("client_cert: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The system's trusted roots (Debian: `/etc/ssl/certs`), read once per process.
pub fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(format!(
                    "no system CA certificates to verify TLS upstreams with ({why}); install ca-certificates or give tls.ca"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// `verify: false`: any certificate chain is accepted, but the handshake signature is still
/// checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
