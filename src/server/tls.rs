//! TLS termination with rustls (ring provider): a listener's server config, built once per
//! snapshot from certificates the config loader already read and checked.
//!
//! SNI picks the certificate: an exact subjectAltName first, then a wildcard one level up
//! (`*.example.com` serves `api.example.com`, never `a.b.example.com`, RFC 6125 §6.4.3), else
//! the first certificate listed. Connections keep the config they shook hands with; a
//! reload (or a change to a certificate file, which triggers one) applies to new
//! handshakes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;

use super::acme::{self, Acme};
use crate::config::{AcmeChallenge, ServerTlsDef, TlsVersion};

/// How one listener accepts connections, compiled with each snapshot.
pub struct ListenerRuntime {
    pub tls: Option<ListenerTls>,
    /// Plain listener with `redirect_to_https`: the port to send clients to.
    pub redirect_https: Option<u16>,
}

pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(def: &ServerTlsDef) -> Option<SniResolver> {
        let default = def.certificates.first()?.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        // The first certificate listed for a name wins, as for the default.
        for c in &def.certificates {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert_with(|| c.key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| c.key.clone()),
                };
            }
        }
        Some(SniResolver { exact, wildcard, default })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else { return self.default.clone() };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// A listener whose certificate comes from ACME.
#[derive(Debug)]
struct AcmeResolver(Arc<Acme>);

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.resolve(&hello)
    }
}

/// The listener's server config; `acme` is the certificate source when `def.acme` is set.
pub fn listener_tls(def: &ServerTlsDef, acme: Option<Arc<Acme>>) -> Result<ListenerTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match def.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &def.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(auth.roots.clone(), provider);
            let verifier = if auth.required { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("client_auth: {e}"))?)
        }
    };
    let mut alpn = def.alpn.clone();
    let resolver: Arc<dyn ResolvesServerCert> = match acme {
        Some(acme) => {
            if acme.challenge() == AcmeChallenge::TlsAlpn01 {
                // Last: a client that offers `h2` as well never gets the validation protocol.
                alpn.push(acme::ACME_TLS_ALPN.to_vec());
            }
            Arc::new(AcmeResolver(acme))
        }
        None => Arc::new(SniResolver::new(def).ok_or("a TLS listener needs at least one certificate")?),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn;
    Ok(ListenerTls { acceptor: TlsAcceptor::from(Arc::new(config)), handshake_timeout: def.handshake_timeout })
}

/// The verified client certificate's subject (RFC 4514 form, `CN=…,O=…`), if the client
/// presented one.
pub fn client_subject(conn: &ServerConnection) -> Option<Arc<str>> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let k = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
        let der = rustls::pki_types::PrivateKeyDer::try_from(k.signing_key.serialize_der()).expect("key");
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(CertifiedKey::from_der(vec![k.cert.der().clone()], der, &provider).expect("certified"))
    }

    #[test]
    fn sni_prefers_exact_then_one_level_wildcard_then_the_default() {
        let (default, exact, wild) = (key("default.test"), key("api.example.com"), key("*.example.com"));
        let resolver = SniResolver {
            exact: HashMap::from([("api.example.com".to_owned(), exact.clone())]),
            wildcard: HashMap::from([("example.com".to_owned(), wild.clone())]),
            default: default.clone(),
        };
        assert!(Arc::ptr_eq(&resolver.pick(Some("API.example.com.")), &exact));
        assert!(Arc::ptr_eq(&resolver.pick(Some("www.example.com")), &wild));
        assert!(Arc::ptr_eq(&resolver.pick(Some("a.b.example.com")), &default));
        assert!(Arc::ptr_eq(&resolver.pick(Some("example.com")), &default));
        assert!(Arc::ptr_eq(&resolver.pick(None), &default));
    }
}
