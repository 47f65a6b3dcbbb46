//! ACME (RFC 8555): a TLS listener's certificate obtained from a CA such as Let's Encrypt and
//! renewed in the background, with instant-acme speaking the protocol.
//!
//! One [`Acme`] per `tls.acme` definition, shared by every snapshot whose config has the same
//! definition, so a reload neither orders again nor loses a pending challenge. Its task:
//! 1. serves the certificate cached in `cache_dir` at once, if it covers the domains and has
//!    not expired (a restart never waits for the CA);
//! 2. orders one when there is none, or when the renewal point is reached (`renew_before`
//!    before expiry, at most a third of the certificate's life, so short-lived certificates
//!    renew in time and a fresh one is never due at once);
//! 3. answers the challenge: tls-alpn-01 (RFC 8737) by a self-signed certificate that the
//!    listener presents to a client asking for the `acme-tls/1` protocol, http-01 by a key
//!    authorization that any plain listener serves under `/.well-known/acme-challenge/`;
//! 4. swaps the new certificate in for new handshakes (open connections keep theirs) and
//!    writes it to the cache.
//!
//! A failed order is retried after 1 minute, doubling up to 4 hours (CAs limit failed
//! validations per hour). The account key is kept in the cache beside the certificates.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::{AcmeChallenge, AcmeDef};

/// The ALPN protocol of a tls-alpn-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Where http-01 tokens are served (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// An order, with its challenges and finalisation, must finish within this time.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(4 * 3600);
/// Never order twice within this time, whatever the certificate's dates say.
const MIN_INTERVAL: Duration = Duration::from_secs(3600);

pub struct Acme {
    def: Arc<AcmeDef>,
    current: ArcSwapOption<Issued>,
    /// tls-alpn-01 certificates by domain while an order is pending.
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// http-01 key authorizations by token while an order is pending.
    tokens: ArcSwap<HashMap<String, Bytes>>,
    started: AtomicBool,
    orders_ok: AtomicU64,
    orders_failed: AtomicU64,
    /// Dropped with the last snapshot that uses this definition, which ends its task.
    stop: Arc<Notify>,
}

/// A certificate in service and its validity.
struct Issued {
    key: Arc<CertifiedKey>,
    /// Its DNS names: one inherited across a reload may lack a newly listed domain.
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Issued {
    /// When to order the next one.
    fn renew_at(&self, renew_before: Duration) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_after - renew_before.min(life / 3)
    }
}

/// What `/metrics` shows of one ACME certificate.
pub struct AcmeStatus {
    pub domain: String,
    pub orders_ok: u64,
    pub orders_failed: u64,
    /// Seconds since the epoch at which the certificate in service expires.
    pub not_after: Option<u64>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("domains", &self.def.domains).finish_non_exhaustive()
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl Acme {
    fn new(def: Arc<AcmeDef>) -> Acme {
        Acme {
            def,
            current: ArcSwapOption::empty(),
            alpn: ArcSwap::default(),
            tokens: ArcSwap::default(),
            started: AtomicBool::new(false),
            orders_ok: AtomicU64::new(0),
            orders_failed: AtomicU64::new(0),
            stop: Arc::new(Notify::new()),
        }
    }

    pub fn challenge(&self) -> AcmeChallenge {
        self.def.challenge
    }

    /// The certificate for a handshake: the tls-alpn-01 answer when the client asks for
    /// `acme-tls/1`, else the one in service (none yet: the handshake fails).
    pub fn resolve(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validation {
            let name = hello.server_name()?.trim_end_matches('.').to_ascii_lowercase();
            return self.alpn.load().get(&name).cloned();
        }
        self.current.load().as_ref().map(|c| c.key.clone())
    }

    /// The key authorization for an http-01 token, while its order is pending.
    pub fn http01(&self, token: &str) -> Option<Bytes> {
        self.tokens.load().get(token).cloned()
    }

    pub fn status(&self) -> AcmeStatus {
        AcmeStatus {
            domain: self.def.domains.first().cloned().unwrap_or_default(),
            orders_ok: self.orders_ok.load(Ordering::Relaxed),
            orders_failed: self.orders_failed.load(Ordering::Relaxed),
            not_after: self
                .current
                .load()
                .as_ref()
                .and_then(|c| c.not_after.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        }
    }

    /// Starts the background task once, however many snapshots share this definition. The
    /// listener may still be binding: the first message goes to the CA, and a validation
    /// comes several round trips later, by which time the socket accepts.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut account = None;
            let mut failures = 0u32;
            loop {
                let Some(acme) = weak.upgrade() else { return };
                let wait = match acme.due_in() {
                    Some(wait) => wait,
                    None => match tokio::time::timeout(ORDER_TIMEOUT, acme.obtain(&mut account))
                        .await
                        .map_err(|_| format!("no certificate within {ORDER_TIMEOUT:?}"))
                    {
                        Ok(Ok(())) => {
                            failures = 0;
                            acme.orders_ok.fetch_add(1, Ordering::Relaxed);
                            acme.due_in().unwrap_or_default().max(MIN_INTERVAL)
                        }
                        Ok(Err(why)) | Err(why) => {
                            acme.clear_challenges();
                            acme.orders_failed.fetch_add(1, Ordering::Relaxed);
                            failures += 1;
                            let wait = FIRST_RETRY.saturating_mul(1 << (failures - 1).min(12)).min(MAX_RETRY);
                            tracing::warn!(
                                domains = ?acme.def.domains,
                                directory = %acme.def.directory,
                                error = %why,
                                retry_in = ?wait,
                                "ACME certificate order failed"
                            );
                            wait
                        }
                    },
                };
                let stop = acme.stop.clone();
                // Only a weak reference while idle, so a definition no config uses goes away.
                drop(acme);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.notified() => return,
                }
            }
        });
    }

    /// `None` when a certificate is needed now; else how long until renewal.
    fn due_in(&self) -> Option<Duration> {
        let current = self.current.load();
        let current = current.as_ref().filter(|c| self.def.domains.iter().all(|d| c.names.contains(d)))?;
        let at = current.renew_at(self.def.renew_before);
        at.duration_since(SystemTime::now()).ok().filter(|d| !d.is_zero())
    }

    fn dir(&self) -> PathBuf {
        ca_dir(&self.def.cache_dir, &self.def.directory)
    }

    fn cert_paths(&self) -> (PathBuf, PathBuf) {
        cached_certificate(&self.def.cache_dir, &self.def.directory, &self.def.domains)
    }

    fn load_cache(&self) {
        let (cert, key) = self.cert_paths();
        let (Ok(chain), Ok(key_pem)) = (std::fs::read(&cert), std::fs::read(&key)) else { return };
        match issued(&chain, &key_pem, &self.def.domains) {
            Ok(found) if found.not_after > SystemTime::now() => {
                tracing::info!(domains = ?self.def.domains, file = %cert.display(), "serving the cached ACME certificate");
                self.current.store(Some(Arc::new(found)));
            }
            Ok(_) => tracing::info!(file = %cert.display(), "the cached ACME certificate has expired; ordering"),
            Err(e) => tracing::warn!(file = %cert.display(), error = %e, "ignoring the cached ACME certificate"),
        }
    }

    async fn obtain(&self, account: &mut Option<Account>) -> Result<(), String> {
        let ids: Vec<Identifier> = self.def.domains.iter().cloned().map(Identifier::Dns).collect();
        let mut order = None;
        // A CA that forgot the cached account (a test CA restarted) gets a new one, once.
        for fresh in [false, true] {
            let acct = match account {
                Some(a) => a.clone(),
                None => account.insert(self.account(fresh).await?).clone(),
            };
            match acct.new_order(&NewOrder::new(&ids)).await {
                Ok(o) => {
                    order = Some(o);
                    break;
                }
                Err(instant_acme::Error::Api(p))
                    if !fresh && p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
                {
                    *account = None;
                }
                Err(e) => return Err(format!("new order: {e}")),
            }
        }
        let mut order = order.ok_or("the CA refused every account")?;
        let mut alpn = HashMap::new();
        let mut tokens = HashMap::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization for {} is {other:?}", authz.identifier())),
            }
            let kind = match self.def.challenge {
                AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                AcmeChallenge::Http01 => ChallengeType::Http01,
            };
            let domain = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {domain}"))?;
            let key_auth = challenge.key_authorization();
            match self.def.challenge {
                AcmeChallenge::TlsAlpn01 => {
                    alpn.insert(domain.clone(), alpn_certificate(&domain, key_auth.digest().as_ref())?);
                    self.alpn.store(Arc::new(alpn.clone()));
                }
                AcmeChallenge::Http01 => {
                    tokens.insert(challenge.token.clone(), Bytes::copy_from_slice(key_auth.as_str().as_bytes()));
                    self.tokens.store(Arc::new(tokens.clone()));
                }
            }
            challenge.set_ready().await.map_err(|e| format!("challenge for {domain}: {e}"))?;
        }
        let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retries).await.map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            let why = order.state().error.as_ref().map_or_else(|| format!("{status:?}"), |p| p.to_string());
            return Err(format!("the order did not become ready: {why}"));
        }
        let key_pem = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order.poll_certificate(&retries).await.map_err(|e| format!("certificate: {e}"))?;
        self.clear_challenges();
        let found = issued(chain_pem.as_bytes(), key_pem.as_bytes(), &self.def.domains)?;
        tracing::info!(domains = ?self.def.domains, "ACME certificate obtained");
        self.current.store(Some(Arc::new(found)));
        let (cert, key) = self.cert_paths();
        // Serving goes on when the cache cannot be written; the next restart orders again.
        if let Err(e) =
            write_private(&key, key_pem.as_bytes()).and_then(|()| write_private(&cert, chain_pem.as_bytes()))
        {
            tracing::warn!(dir = %self.dir().display(), error = %e, "cannot cache the ACME certificate");
        }
        Ok(())
    }

    fn clear_challenges(&self) {
        self.alpn.store(Arc::default());
        self.tokens.store(Arc::default());
    }

    /// The cached account for this CA, or a new one (saved to the cache).
    async fn account(&self, fresh: bool) -> Result<Account, String> {
        let file = self.dir().join("account.json");
        if !fresh && let Ok(saved) = std::fs::read(&file) {
            match serde_json::from_slice::<AccountCredentials>(&saved) {
                Ok(credentials) => {
                    return Account::builder_with_http(self.http_client()?)
                        .from_credentials(credentials)
                        .await
                        .map_err(|e| format!("ACME directory {}: {e}", self.def.directory));
                }
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable ACME account"),
            }
        }
        let contact = self.def.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let (account, credentials) = Account::builder_with_http(self.http_client()?)
            .create(&new, self.def.directory.clone(), None)
            .await
            .map_err(|e| format!("new account at {}: {e}", self.def.directory))?;
        match serde_json::to_vec(&credentials) {
            Ok(json) => {
                if let Err(e) = write_private(&file, &json) {
                    tracing::warn!(file = %file.display(), error = %e, "cannot cache the ACME account");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise the ACME account"),
        }
        Ok(account)
    }

    /// HTTPS to the CA, trusting the system's roots and `ca_roots`.
    fn http_client(&self) -> Result<Box<dyn instant_acme::HttpClient>, String> {
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(system) = crate::upstream::client::system_roots() {
            roots.roots.extend(system.roots.iter().cloned());
        }
        for c in self.def.ca_roots.iter().flat_map(|c| c.iter()) {
            roots.add(c.clone()).map_err(|e| format!("ca_roots: {e}"))?;
        }
        if roots.is_empty() {
            return Err(
                "no CA certificates to trust the ACME server with; install ca-certificates or give ca_roots".into()
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, BodyWrapper<Bytes>>(connector);
        Ok(Box::new(client))
    }
}

/// The folder of one CA's account and certificates in `cache_dir`: one per directory URL, so
/// a staging account or certificate never serves production.
fn ca_dir(cache_dir: &Path, directory: &str) -> PathBuf {
    let digest = Sha256::digest(directory.as_bytes());
    cache_dir.join(format!("ca-{}", hex(&digest[..8])))
}

/// Where the certificate for `domains` is cached: `(chain, key)` PEM files named by the first
/// domain and a digest of the whole list, so a changed list orders afresh instead of serving a
/// certificate that lacks a name.
pub fn cached_certificate(cache_dir: &Path, directory: &str, domains: &[String]) -> (PathBuf, PathBuf) {
    let digest = Sha256::digest(domains.join(",").as_bytes());
    let stem = format!("{}-{}", domains.first().map_or("cert", String::as_str), hex(&digest[..4]));
    let dir = ca_dir(cache_dir, directory);
    (dir.join(format!("{stem}.crt.pem")), dir.join(format!("{stem}.key.pem")))
}

/// The certificate an RFC 8737 validation server expects: self-signed, for `domain`, with the
/// key authorization's digest in a critical acmeIdentifier extension.
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider.key_provider.load_private_key(der).map_err(|e| e.to_string())?;
    // `CertifiedKey::from_der` would parse the certificate with webpki, which refuses the
    // critical acmeIdentifier extension; the key is the one just generated for it.
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

/// A PEM chain and key, checked to cover `domains`.
fn issued(chain_pem: &[u8], key_pem: &[u8], domains: &[String]) -> Result<Issued, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("no certificate in the chain")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let names = crate::config::dns_names(leaf.as_ref()).map_err(|e| e.to_string())?;
    if let Some(missing) = domains.iter().find(|d| !names.contains(d)) {
        return Err(format!("the certificate does not cover {missing}"));
    }
    let time =
        |t: x509_parser::time::ASN1Time| UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0));
    let (not_before, not_after) = (time(parsed.validity().not_before), time(parsed.validity().not_after));
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
    Ok(Issued { key: Arc::new(key), names, not_before, not_after })
}

/// Writes `bytes` to `path` readable by the owner only, through a temporary file renamed over
/// it, so a crash never leaves half a key.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One [`Acme`] per definition, shared by the snapshots that have it.
#[derive(Default)]
pub struct Registry {
    live: Mutex<Vec<(Arc<AcmeDef>, Weak<Acme>)>>,
}

impl Registry {
    pub fn get_or_create(&self, def: &Arc<AcmeDef>) -> Arc<Acme> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|(_, w)| w.strong_count() > 0);
        if let Some(acme) = live.iter().find(|(d, _)| **d == **def).and_then(|(_, w)| w.upgrade()) {
            return acme;
        }
        let acme = Arc::new(Acme::new(def.clone()));
        // Read here, not in the task: the cached certificate is in service before the
        // listener accepts its first connection.
        acme.load_cache();
        if acme.current.load().is_none() {
            // A reload that changed the list (a domain added): the previous certificate keeps
            // serving the names it has until the new order completes.
            let previous = live
                .iter()
                .filter(|(d, _)| d.directory == def.directory && d.domains.iter().any(|n| def.domains.contains(n)))
                .filter_map(|(_, w)| w.upgrade()?.current.load_full())
                .next();
            acme.current.store(previous);
        }
        live.push((def.clone(), Arc::downgrade(&acme)));
        acme
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(days_left: u64, life: u64) -> Issued {
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(days_left * 86_400);
        let key = alpn_certificate("a.test", &[0; 32]).expect("cert");
        Issued {
            key,
            names: vec!["a.test".into()],
            not_before: not_after - Duration::from_secs(life * 86_400),
            not_after,
        }
    }

    fn def(domains: &[&str]) -> Arc<AcmeDef> {
        Arc::new(AcmeDef {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            email: None,
            directory: "https://ca.test/dir".into(),
            cache_dir: PathBuf::from("/nonexistent/ferroway-acme"),
            challenge: AcmeChallenge::TlsAlpn01,
            ca_roots: None,
            ca_roots_file: None,
            renew_before: Duration::from_secs(30 * 86_400),
        })
    }

    #[test]
    fn a_changed_domain_list_keeps_serving_the_previous_certificate_until_its_own_arrives() {
        let registry = Registry::default();
        let first = registry.get_or_create(&def(&["a.test"]));
        assert!(Arc::ptr_eq(&first, &registry.get_or_create(&def(&["a.test"]))), "same definition, same state");
        first.current.store(Some(Arc::new(cert(60, 90))));
        let widened = registry.get_or_create(&def(&["a.test", "b.test"]));
        assert!(!Arc::ptr_eq(&first, &widened));
        assert!(widened.current.load().is_some(), "the previous certificate serves meanwhile");
        assert!(widened.due_in().is_none(), "and an order for the new list starts at once");
        let unrelated = registry.get_or_create(&def(&["c.test"]));
        assert!(unrelated.current.load().is_none());
    }

    #[test]
    fn renewal_comes_at_renew_before_or_a_third_of_the_life_whichever_is_later() {
        let month = Duration::from_secs(30 * 86_400);
        // 90-day certificate, 31 days left: not due; 29 days left: due.
        assert!(cert(31, 90).renew_at(month) > SystemTime::now());
        assert!(cert(29, 90).renew_at(month) < SystemTime::now());
        // A 6-day certificate renews with 2 days left, not at once.
        assert!(cert(3, 6).renew_at(month) > SystemTime::now());
        assert!(cert(1, 6).renew_at(month) < SystemTime::now());
    }
}
