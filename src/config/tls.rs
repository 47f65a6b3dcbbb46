//! TLS settings: a listener's certificates and client authentication, and TLS to upstreams.
//!
//! Every file is read and parsed here, at load, so `ferroway check` names a certificate or
//! key that cannot be read, is not PEM, or does not belong to its certificate, at the line
//! that names it. Relative paths are relative to the working directory, as for
//! `public_key_file`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::decode::{Decode, Dur, Fields, Located, Problems, one_of};
use super::node::Node;

#[derive(Debug)]
pub struct ServerTlsDef {
    /// SNI picks among these; the first is the default for clients that send no or an
    /// unknown name.
    pub certificates: Vec<ServerCert>,
    pub min_version: TlsVersion,
    /// ALPN protocols in preference order, as wire names (`h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    pub client_auth: Option<ClientAuthDef>,
    /// Certificates obtained from an ACME CA instead of `certificates`.
    pub acme: Option<Located<Arc<AcmeDef>>>,
    /// A client must finish its handshake within this time.
    pub handshake_timeout: Duration,
    /// Every file this definition read, so a change to one reloads the config.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

#[derive(Debug)]
pub struct ServerCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the certificate's subjectAltName, lower case; `*.example.com` for a
    /// wildcard.
    pub names: Vec<String>,
}

#[derive(Debug)]
pub struct ClientAuthDef {
    pub ca_file: PathBuf,
    pub roots: Arc<rustls::RootCertStore>,
    /// Without `required`, a client may present no certificate (but never an invalid one).
    pub required: bool,
}

/// TLS from the gateway to an upstream's targets.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsDef {
    /// Name sent in SNI and verified against the certificate; by default the target's host.
    pub server_name: Option<String>,
    /// Roots that sign the upstream's certificate; the system's roots when absent.
    pub ca: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The gateway's own certificate chain and key, for upstreams that ask for one (mTLS).
    pub client_cert: Option<Arc<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
    /// `false` accepts any certificate: for tests and trusted networks only.
    pub verify: bool,
}

/// `tls.acme`: certificates for `domains` obtained from an ACME CA (RFC 8555) and renewed in
/// the background.
#[derive(Debug, PartialEq)]
pub struct AcmeDef {
    /// DNS names the certificate covers, lower case; the first names the cache files.
    pub domains: Vec<String>,
    pub email: Option<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// Account and certificates are kept here, so a restart serves the cached certificate.
    pub cache_dir: PathBuf,
    pub challenge: AcmeChallenge,
    /// Roots trusted for the CA's own HTTPS besides the system's (a test CA such as pebble).
    pub ca_roots: Option<Arc<Vec<CertificateDer<'static>>>>,
    pub ca_roots_file: Option<PathBuf>,
    /// Renew when this little of the certificate's life is left (at most a third of it).
    pub renew_before: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: answered by the TLS listener itself.
    TlsAlpn01,
    /// RFC 8555 §8.3: answered on plain HTTP listeners (port 80).
    Http01,
}

/// Let's Encrypt's production directory, the default `directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Decode for AcmeDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] = &["domains", "email", "directory", "cache_dir", "challenge", "ca_roots", "renew_before"];
        let f = Fields::new(node, path, KEYS, p)?;
        let listed: Vec<Located<String>> = f.req("domains", p)?;
        if listed.is_empty() {
            p.add(f.pos(), &super::decode::child_path(path, "domains"), "list at least one domain name");
        }
        let mut domains = Vec::with_capacity(listed.len());
        for d in &listed {
            let name = d.value.trim_end_matches('.').to_ascii_lowercase();
            if name.starts_with("*.") {
                p.add(
                    d.pos,
                    &d.path,
                    format!(
                        "{:?}: wildcard certificates need the dns-01 challenge, which Ferroway does not answer; list each name",
                        d.value
                    ),
                );
            } else if name.parse::<std::net::IpAddr>().is_ok()
                || !matches!(
                    rustls::pki_types::ServerName::try_from(name.as_str()),
                    Ok(rustls::pki_types::ServerName::DnsName(_))
                )
            {
                p.add(d.pos, &d.path, format!("{:?} is not a DNS name such as api.example.com", d.value));
            } else if domains.contains(&name) {
                p.add(d.pos, &d.path, format!("{name} is listed twice"));
            } else {
                domains.push(name);
            }
        }
        let email = f.opt::<Located<String>>("email", p).and_then(|e| {
            let ok = e.value.split_once('@').is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
                && !e.value.contains(char::is_whitespace);
            if !ok {
                p.add(e.pos, &e.path, format!("{:?} is not an email address such as ops@example.com", e.value));
            }
            ok.then_some(e.value)
        });
        let directory = match f.opt::<Located<String>>("directory", p) {
            None => Some(LETS_ENCRYPT.to_owned()),
            Some(d) => match d.value.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Some(d.value),
                _ => {
                    p.add(
                        d.pos,
                        &d.path,
                        format!("{:?}: expected the https URL of an ACME directory (RFC 8555 requires HTTPS)", d.value),
                    );
                    None
                }
            },
        };
        let cache_dir: Option<Located<String>> = f.req("cache_dir", p);
        let challenge = f.opt::<Located<String>>("challenge", p).map_or(Some(AcmeChallenge::TlsAlpn01), |c| {
            one_of(&c, p, "ACME challenge", "tls-alpn-01 or http-01", |s| match s {
                "tls-alpn-01" => Some(AcmeChallenge::TlsAlpn01),
                "http-01" => Some(AcmeChallenge::Http01),
                _ => None,
            })
        })?;
        let roots_file = f.opt::<Located<String>>("ca_roots", p);
        let ca_roots = match &roots_file {
            Some(file) => Some(Arc::new(read_certs(file, p)?)),
            None => None,
        };
        let renew_before = f.opt::<Dur>("renew_before", p).map_or(Duration::from_secs(30 * 86_400), |d| d.0);
        Some(AcmeDef {
            domains,
            email,
            directory: directory?,
            cache_dir: PathBuf::from(cache_dir?.value),
            challenge,
            ca_roots,
            ca_roots_file: roots_file.map(|f| PathBuf::from(f.value)),
            renew_before,
        })
    }
}

impl Decode for ServerTlsDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] = &["certificates", "min_version", "alpn", "client_auth", "acme", "handshake_timeout"];
        let f = Fields::new(node, path, KEYS, p)?;
        let mut files = Vec::new();
        let certificates: Vec<ServerCert> = match f.node("certificates") {
            Some(n) => {
                let cpath = super::decode::child_path(path, "certificates");
                match &n.value {
                    super::node::Value::Seq(items) => items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, item)| decode_cert(item, &super::decode::item_path(&cpath, i), p, &mut files))
                        .collect(),
                    _ => {
                        p.add(n.pos, &cpath, format!("expected a list of {{ cert, key }}, found {}", n.kind()));
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let acme = f.opt::<Located<AcmeDef>>("acme", p);
        if let Some(a) = &acme {
            files.extend(a.value.ca_roots_file.iter().cloned());
        }
        if let (Some(_), Some(certs)) = (f.node("acme"), f.node("certificates")) {
            p.add(
                certs.pos,
                &super::decode::child_path(path, "certificates"),
                "give either `certificates` or `acme`, not both",
            );
        } else if !f.has("certificates") && !f.has("acme") {
            p.add(
                f.pos(),
                path,
                "missing required key `certificates` (a list such as `- { cert: api.pem, key: api-key.pem }`) or `acme`",
            );
        } else if f.has("certificates") && certificates.is_empty() && !p.0.iter().any(|q| q.path.starts_with(path)) {
            p.add(f.pos(), path, "list at least one certificate");
        }
        // A bad version is reported; the listener still counts as TLS for later checks.
        let min_version = f.opt::<Located<String>>("min_version", p).map_or(TlsVersion::V12, |v| {
            one_of(&v, p, "TLS version", "\"1.2\" or \"1.3\"", |s| match s {
                "1.2" => Some(TlsVersion::V12),
                "1.3" => Some(TlsVersion::V13),
                _ => None,
            })
            .unwrap_or(TlsVersion::V12)
        });
        let alpn = match f.opt::<Vec<Located<String>>>("alpn", p) {
            None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Some(list) => {
                let protocols: Vec<Vec<u8>> = list
                    .iter()
                    .filter_map(|a| {
                        one_of(a, p, "ALPN protocol", "h2 or http/1.1", |s| {
                            matches!(s, "h2" | "http/1.1").then(|| s.as_bytes().to_vec())
                        })
                    })
                    .collect();
                if list.is_empty() {
                    p.add(f.pos(), &super::decode::child_path(path, "alpn"), "list at least one of h2, http/1.1");
                }
                protocols
            }
        };
        let client_auth = f.opt::<ClientAuthDef>("client_auth", p);
        if let Some(c) = &client_auth {
            files.push(c.ca_file.clone());
        }
        let handshake_timeout = f.opt::<Dur>("handshake_timeout", p).map_or(Duration::from_secs(10), |d| d.0);
        let acme = acme.map(|a| Located { value: Arc::new(a.value), pos: a.pos, path: a.path });
        Some(ServerTlsDef { certificates, min_version, alpn, client_auth, acme, handshake_timeout, files })
    }
}

fn decode_cert(node: &Node, path: &str, p: &mut Problems, files: &mut Vec<PathBuf>) -> Option<ServerCert> {
    let f = Fields::new(node, path, &["cert", "key"], p)?;
    let cert_file: Located<String> = f.req("cert", p)?;
    let key_file: Located<String> = f.req("key", p)?;
    files.push(PathBuf::from(&cert_file.value));
    files.push(PathBuf::from(&key_file.value));
    let chain = read_certs(&cert_file, p)?;
    let key = read_key(&key_file, p)?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = match CertifiedKey::from_der(chain, key, &provider) {
        Ok(c) => c,
        Err(rustls::Error::InconsistentKeys(_)) => {
            p.add(
                key_file.pos,
                &key_file.path,
                format!("{} is not the private key of the certificate in {}", key_file.value, cert_file.value),
            );
            return None;
        }
        Err(e) => {
            p.add(key_file.pos, &key_file.path, format!("{}: unusable private key: {e}", key_file.value));
            return None;
        }
    };
    let names = match certified.end_entity_cert().map(|c| dns_names(c.as_ref())) {
        Ok(Ok(names)) => names,
        Ok(Err(e)) | Err(e) => {
            p.add(cert_file.pos, &cert_file.path, format!("{}: cannot read the certificate: {e}", cert_file.value));
            return None;
        }
    };
    Some(ServerCert { key: Arc::new(certified), names })
}

/// The subjectAltName DNS names of a DER certificate, lower case.
pub fn dns_names(der: &[u8]) -> Result<Vec<String>, rustls::Error> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| rustls::Error::General(format!("not an X.509 certificate ({e})")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The certificates of a PEM file (a chain, or a set of roots); at least one.
pub(super) fn read_certs(file: &Located<String>, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read_file(file, p)?;
    match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            p.add(
                file.pos,
                &file.path,
                format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", file.value),
            );
            None
        }
        Err(e) => {
            p.add(file.pos, &file.path, format!("{} is not valid PEM: {e}", file.value));
            None
        }
    }
}

fn read_key(file: &Located<String>, p: &mut Problems) -> Option<PrivateKeyDer<'static>> {
    let bytes = read_file(file, p)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Some(key),
        Err(e) => {
            p.add(
                file.pos,
                &file.path,
                format!("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1 expected): {e}", file.value),
            );
            None
        }
    }
}

fn read_file(file: &Located<String>, p: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(&file.value) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            p.add(file.pos, &file.path, format!("cannot read {}: {e}", file.value));
            None
        }
    }
}

impl Decode for ClientAuthDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["ca", "required"], p)?;
        let ca: Located<String> = f.req("ca", p)?;
        let required = f.opt("required", p).unwrap_or(true);
        let certs = read_certs(&ca, p)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            if let Err(e) = roots.add(c) {
                p.add(ca.pos, &ca.path, format!("{}: not a usable CA certificate: {e}", ca.value));
                return None;
            }
        }
        Some(ClientAuthDef { ca_file: PathBuf::from(&ca.value), roots: Arc::new(roots), required })
    }
}

impl Decode for UpstreamTlsDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["server_name", "ca", "client_cert", "client_key", "verify"], p)?;
        let server_name = f.opt::<Located<String>>("server_name", p).and_then(|n| {
            match rustls::pki_types::ServerName::try_from(n.value.as_str()) {
                Ok(_) => Some(n.value),
                Err(_) => {
                    p.add(
                        n.pos,
                        &n.path,
                        format!("invalid server name {:?}; expected a DNS name or IP address", n.value),
                    );
                    None
                }
            }
        });
        let ca = f.opt::<Located<String>>("ca", p).and_then(|file| read_certs(&file, p)).map(Arc::new);
        let cert = f.opt::<Located<String>>("client_cert", p);
        let key = f.opt::<Located<String>>("client_key", p);
        let client_cert = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let chain = read_certs(&c, p);
                let key = read_key(&k, p);
                let (chain, key) = (chain?, key?);
                let provider = rustls::crypto::ring::default_provider();
                if let Err(e) = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
                    p.add(k.pos, &k.path, format!("{} does not go with {}: {e}", k.value, c.value));
                    return None;
                }
                Some(Arc::new((chain, key)))
            }
            (Some(c), None) => {
                p.add(c.pos, &c.path, "client_cert needs client_key beside it");
                None
            }
            (None, Some(k)) => {
                p.add(k.pos, &k.path, "client_key needs client_cert beside it");
                None
            }
        };
        Some(UpstreamTlsDef { server_name, ca, client_cert, verify: f.opt("verify", p).unwrap_or(true) })
    }
}
