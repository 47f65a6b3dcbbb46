//! A real headless Chromium (Debian's `chromium`; `scripts/test` installs it), driven over the
//! DevTools protocol on a WebSocket: navigate, evaluate JavaScript in the page, take a
//! screenshot. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub struct Browser {
    child: Child,
    /// `host:port` of the DevTools endpoint.
    devtools: String,
    _profile: tempfile::TempDir,
}

pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Browser {
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts (scripts/test installs Debian's chromium package)");
        let stderr = child.stderr.take().expect("stderr");
        // Chromium says where DevTools listens on its first lines.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(url.split('/').next().unwrap_or_default().to_owned());
                }
            }
        });
        let devtools = rx.recv_timeout(Duration::from_secs(30)).expect("chromium's DevTools endpoint within 30 s");
        Browser { child, devtools, _profile: profile }
    }

    /// The first page (tab) of the browser.
    pub async fn page(&self) -> Page {
        let list = super::get(&format!("http://{}/json/list", self.devtools)).await.json();
        let url = list
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("DevTools WebSocket");
        Page { ws, next_id: 1 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    /// One DevTools command; its result (events arriving meanwhile are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).await.expect("send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("open")
                .expect("message");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        r["result"]["value"].clone()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("data")).expect("base64 png")
    }
}
