//! Test certificates made at run time with rcgen (never committed keys): a CA, leaf
//! certificates it signs (ECDSA P-256, or RSA 2048 made with the `rsa` crate, since ring
//! cannot generate RSA keys), PEM files for the gateway, and rustls configs for the real
//! clients and servers of the tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub enum Alg {
    Ecdsa,
    Rsa,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Ca { der: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names` (DNS names; the first is also the CN).
    pub fn leaf(&self, names: &[&str], alg: Alg) -> Leaf {
        let key = match alg {
            Alg::Ecdsa => KeyPair::generate().expect("leaf key"),
            Alg::Rsa => {
                use rsa::pkcs8::{EncodePrivateKey, LineEnding};
                let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
                let pem = rsa.to_pkcs8_pem(LineEnding::LF).expect("pem");
                KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("rsa key pair")
            }
        };
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf { der: cert.der().clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A certificate for `names` valid from `age` ago until `left` from now.
    pub fn leaf_dated(&self, names: &[&str], age: Duration, left: Duration) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - age;
        params.not_after = now + left;
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf { der: cert.der().clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// The CA's certificate written as `name` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write ca");
        path
    }

    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        Arc::new(roots)
    }

    /// A client trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&str], identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots());
        let mut config = match identity {
            Some(leaf) => builder.with_client_auth_cert(vec![leaf.der.clone()], leaf.key()).expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

impl Leaf {
    /// `<name>.pem` and `<name>-key.pem` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem")
    }

    /// A server presenting this certificate, offering `alpn`; with `client_ca`, it requires a
    /// client certificate signed by that CA.
    pub fn server_config(&self, alpn: &[&str], client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(ca.roots(), provider)
                    .build()
                    .expect("verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(vec![self.der.clone()], self.key()).expect("server cert");
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}
