//! Pebble, the ACME test CA (Debian's `pebble`; `scripts/test` installs it), on free loopback
//! ports, with `pebble-challtestsrv` as its DNS server answering 127.0.0.1 for every name, so
//! its validations reach the gateway under test. Both are killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::pki::{Alg, Ca};
use super::{full, send_tls, tls_connect};

pub struct Pebble {
    /// The ACME directory URL to put in the gateway's config.
    pub directory: String,
    /// PEM file of the CA behind pebble's own HTTPS (the gateway's `ca_roots`).
    pub https_ca: PathBuf,
    ca: Ca,
    management: SocketAddr,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A loopback port free for both TCP and UDP (the DNS server takes both).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Pebble {
    /// Starts pebble; its validations connect to `http_port` (http-01) and `tls_port`
    /// (tls-alpn-01) on 127.0.0.1. Returns once both servers accept connections.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("pebble https test ca");
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"], Alg::Ecdsa).write(dir.path(), "pebble");
        let https_ca = ca.write(dir.path(), "pebble-https-ca.pem");
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("write pebble config");
        let spawn = |cmd: &mut Command, what: &str| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {what} ({e}); scripts/test installs Debian's pebble package"))
        };
        let dns_server = spawn(
            Command::new("pebble-challtestsrv").args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", free_port()),
            ]),
            "pebble-challtestsrv",
        );
        let pebble = spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // Validate at once (no random wait) and never refuse a good nonce, so a test
                // takes one order's time.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            "pebble",
        );
        let started = Instant::now();
        for port in [dns, listen, management] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(20), "pebble did not start listening on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_ca,
            ca,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            children: vec![dns_server, pebble],
            _dir: dir,
        }
    }

    /// The root pebble issues certificates under (a new one each time pebble starts).
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let stream = tls_connect(self.management, "localhost", self.ca.client_config(&["http/1.1"], None))
            .await
            .expect("connect to pebble's management port");
        let req = Request::get("/roots/0").header("host", "localhost").body(full("")).expect("request");
        let got = send_tls(stream, req).await;
        assert_eq!(got.status, 200, "pebble root: {}", got.text());
        CertificateDer::from_pem_slice(&got.body).expect("pebble root is PEM")
    }

    /// Kills pebble (its state, accounts and roots, goes with it).
    pub fn kill(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
    }
}
