//! The command line as users and scripts see it: `check` output and exit codes, `run` from a
//! file or FERROWAY_CONFIG, and a clean exit on SIGTERM.

mod support;

use std::process::Command;

use support::*;

fn ferroway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroway"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_accepts_a_valid_config_with_a_one_line_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "ok.yaml",
        "listeners: [{ name: public, address: 127.0.0.1:1 }]\nupstreams: { u: { targets: [{ address: 127.0.0.1:2 }] } }\nroutes: [{ name: r, match: { path: / }, upstream: u }]\n",
    );
    let out = ferroway().arg("check").arg(&path).output().expect("run check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.ends_with("ok: 1 listener, 1 route, 1 upstream\n"), "{stdout}");
}

#[test]
fn check_lists_every_problem_with_file_line_column_and_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "bad.yaml",
        "listeners:\n  - name: public\n    adress: 127.0.0.1:8080\nupstreams:\n  users:\n    targets: [{ address: 127.0.0.1:9001 }]\n    timeouts: { connect: soon }\nroutes:\n  - name: r\n    match: { path_prefix: /api }\n    upstream: user\n",
    );
    let out = ferroway().arg("check").arg(&path).output().expect("run check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:2:5: listeners[0]: missing required key `address`"),
        format!("{file}:3:5: listeners[0].adress: unknown key `adress`; did you mean `address`?"),
        format!("{file}:7:26: upstreams.users.timeouts.connect: invalid duration \"soon\""),
        format!("{file}:11:15: routes[0].upstream: unknown upstream \"user\"; did you mean \"users\"?"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"));
}

#[test]
fn check_reports_unreadable_and_non_yaml_files_without_panicking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ferroway().arg("check").arg(dir.path().join("missing.yaml")).output().expect("run check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read file"));
    for junk in ["\u{0}\u{1}\u{2}", "listeners: [", ": : :", "- a\n- b\n", "{{{{", "listeners: &a [*a]"] {
        let path = write(&dir, "junk.yaml", junk);
        let out = ferroway().arg("check").arg(&path).output().expect("run check");
        assert_eq!(out.status.code(), Some(1), "{junk:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("junk.yaml:") && !stderr.contains("panicked"), "{junk:?}: {stderr}");
    }
}

#[test]
fn every_example_config_passes_check() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = ferroway().arg("check").arg(&path).output().expect("run check");
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[tokio::test]
async fn run_serves_from_the_config_in_ferroway_config_and_exits_cleanly_on_sigterm() {
    let backend = Backend::text("from backend").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "env.yaml",
        &format!(
            "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\nupstreams: {{ u: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, match: {{ path_prefix: / }}, upstream: u }}]\n",
            backend.address()
        ),
    );
    let mut child = ferroway()
        .arg("run")
        .env("FERROWAY_CONFIG", &path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // The reader stops (and closes the pipe) once it has the address: the gateway must keep
    // running when whoever reads its log goes away.
    let addr = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).find_map(|l| listening_address(&l))
    })
    .await
    .expect("reader")
    .expect("listening address logged");
    assert_eq!(get(&format!("http://{addr}/")).await.text(), "from backend");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed after exit");
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_bad_file_changes_nothing() {
    let (a, b) = (Backend::text("a").await, Backend::text("b").await);
    let yaml = |to: &Backend| {
        format!(
            "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\n{}",
            single_route(to.addr, "", ALL)
        )
    };
    let gw = GatewayProcess::start(&yaml(&a));
    let url = format!("http://{}/", gw.addr);
    assert_eq!(get(&url).await.text(), "a");

    std::fs::write(&gw.config, "routes: [").expect("write");
    gw.signal("HUP");
    gw.wait_for_log("reload failed", 1);
    assert_eq!(get(&url).await.text(), "a", "a bad file changes nothing");
    std::fs::write(&gw.config, yaml(&b)).expect("write");
    gw.signal("HUP");
    gw.wait_for_log("config reloaded", 1);
    assert_eq!(get(&url).await.text(), "b");
    // Off a terminal, the gateway's own log is one JSON object per line.
    for line in gw.log_lines() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

const BASE: &str = "listeners: [{ name: public, address: 127.0.0.1:0 }]\naccess_log: { output: off }\nadmin: { address: 127.0.0.1:0 }\nmiddleware: { auth: { jwt: { algorithms: [HS256], secret: topsecret-topsecret-topsecret-0123 } } }\nupstreams:\n  a: { targets: [{ address: 127.0.0.1:2 }] }\n  b: { targets: [{ address: 127.0.0.1:3 }] }\nroutes:\n  - { name: r1, match: { path: /1 }, upstream: a, middleware: [auth] }\n  - { name: r2, match: { path: /2 }, upstream: b }\n";
const NEXT: &str = "listeners: [{ name: public, address: 127.0.0.1:0 }]\naccess_log: { output: off }\nadmin: { address: 127.0.0.1:0 }\nmiddleware: { auth: { jwt: { algorithms: [HS256], secret: topsecret-topsecret-topsecret-0123 } } }\nupstreams:\n  a: { targets: [{ address: 127.0.0.1:4 }] }\n  c: { targets: [{ address: 127.0.0.1:3 }] }\nroutes:\n  - { name: r1, match: { path: /1 }, upstream: a, middleware: [auth] }\n  - { name: r3, match: { path: /3 }, upstream: c }\n";
const CHANGES: &str = "  + route r3\n  - route r2\n  ~ upstream a\n  + upstream c\n  - upstream b\n";

#[test]
fn check_against_another_file_lists_what_a_reload_would_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = write(&dir, "old.yaml", BASE);
    let new = write(&dir, "new.yaml", NEXT);
    let out = ferroway().arg("check").arg(&new).arg("--against").arg(&old).output().expect("run check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with(&format!("changes against {}:\n{CHANGES}", old.display())), "{stdout}");
    let same = ferroway().arg("check").arg(&old).arg("--against").arg(&old).output().expect("run check");
    assert!(String::from_utf8_lossy(&same.stdout).contains("no changes against"));
}

#[tokio::test]
async fn check_against_a_running_gateway_reads_its_redacted_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = gateway(BASE).await;
    let admin = gw.running.control.admin_address().expect("admin");
    let shown = get(&format!("http://{admin}/config")).await;
    assert_eq!(shown.status, http::StatusCode::OK);
    assert!(!shown.text().contains("topsecret"), "secrets are redacted: {}", shown.text());
    assert_eq!(shown.json()["middleware"]["auth"]["jwt"]["secret"], "<redacted>");
    let new = write(&dir, "new.yaml", NEXT);
    let out = tokio::task::spawn_blocking(move || {
        ferroway().arg("check").arg(&new).arg("--admin").arg(admin.to_string()).output().expect("run check")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with(&format!("changes against the gateway at {admin}:\n{CHANGES}")), "{stdout}");
}
