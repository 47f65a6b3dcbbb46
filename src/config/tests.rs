use std::path::Path;
use std::time::Duration;

use super::*;

fn check(yaml: &str) -> Result<Config, ConfigError> {
    load_str(yaml, Path::new("gw.yaml"), [("PORT".to_string(), "9001".to_string())].into_iter().collect())
}

/// Asserts that one of `problems` starts with `prefix` (line:column: path:) and mentions `needle`.
fn has_problem(problems: &[String], prefix: &str, needle: &str) {
    assert!(problems.iter().any(|m| m.starts_with(prefix) && m.contains(needle)), "{prefix} {needle}: {problems:#?}")
}

fn problems(yaml: &str) -> Vec<String> {
    match check(yaml) {
        Ok(_) => panic!("config should be rejected"),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

const VALID: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
upstreams:
  users:
    targets:
      - address: 127.0.0.1:${PORT}
      - address: backend.internal:9002
    timeouts: { connect: 250ms, response_header: 30s, idle: 90s }
routes:
  - name: users
    match:
      path_prefix: /api/users
      host: api.example.com
      methods: [GET, post]
      headers: { x-canary: \"true\" }
    upstream: users
    strip_prefix: true
    host_header: upstream
limits:
  max_request_body: 10MiB
  max_header_bytes: 32KiB
";

#[test]
fn the_documented_example_is_valid() {
    let c = check(VALID).expect("valid");
    assert_eq!(c.listeners[0].address.value.port(), 8080);
    let (name, def) = &c.upstreams[0];
    assert_eq!(name.value, "users");
    let def = def.as_ref().expect("upstream decoded");
    assert_eq!(def.targets[0].address, "127.0.0.1:9001");
    assert_eq!(def.timeouts.connect, std::time::Duration::from_millis(250));
    let r = &c.routes[0];
    assert_eq!(r.matcher.methods.as_deref(), Some(&[http::Method::GET, http::Method::POST][..]));
    assert_eq!(r.matcher.host.as_ref().map(|h| &h.value), Some(&HostPattern::Exact("api.example.com".into())));
    assert_eq!(r.host_header, HostHeader::Upstream);
    assert_eq!(c.limits.max_header_bytes, 32 << 10);
}

#[test]
fn every_problem_is_reported_with_line_column_and_path() {
    let yaml = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
upstreams:
  users:
    targets: [{ address: 127.0.0.1:9001 }]
    timeouts: { connect: fast }
routes:
  - name: users
    match: { path_prefix: /api }
    upstream: userz
    strip_prefx: true
";
    let p = problems(yaml);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(
        p[0],
        "7:26: upstreams.users.timeouts.connect: invalid duration \"fast\" (expected number at 0); expected a duration such as 250ms, 5s or 2m"
    );
    assert_eq!(p[1], "11:15: routes[0].upstream: unknown upstream \"userz\"; did you mean \"users\"?");
    assert_eq!(p[2], "12:5: routes[0].strip_prefx: unknown key `strip_prefx`; did you mean `strip_prefix`?");
}

#[test]
fn rendered_error_names_the_file() {
    let e = check("listeners: []\nroutes: 5\n").expect_err("invalid");
    let text = e.to_string();
    assert!(text.starts_with("gw.yaml: 1 problem\n"), "{text}");
    assert!(text.contains("gw.yaml:2:9: routes: expected a list, found an integer"), "{text}");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let e = check("listeners: [\n").expect_err("invalid");
    assert!(e.problems[0].pos.line >= 1, "{e}");
}

#[test]
fn missing_keys_and_bad_values_are_explained() {
    let yaml = "\
listeners:
  - name: a
    address: nowhere
  - address: 127.0.0.1:1
upstreams:
  u:
    targets: [{ address: 'bad host:80' }]
routes:
  - name: r
    match: { path: /a/../b }
    upstream: u
";
    let p = problems(yaml);
    assert!(p.iter().any(|m| m.starts_with("3:14: listeners[0].address: invalid address \"nowhere\"")), "{p:#?}");
    assert!(p.iter().any(|m| m.starts_with("4:5: listeners[1]: missing required key `name`")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("upstreams.u.targets[0].address: invalid host")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("not in normal form; did you mean \"/b\"?")), "{p:#?}");
}

#[test]
fn ambiguous_routes_are_rejected() {
    let yaml = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
upstreams: { u: { targets: [{ address: 127.0.0.1:2 }] } }
routes:
  - { name: one, match: { path_prefix: /api, methods: [GET] }, upstream: u }
  - { name: two, match: { path_prefix: /api/, methods: [GET, PUT] }, upstream: u }
  - { name: three, match: { path_prefix: /api, methods: [POST] }, upstream: u }
";
    let p = problems(yaml);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("route \"two\" matches exactly the same requests as route \"one\" (line 4)"), "{p:#?}");
}

#[test]
fn duplicates_and_misplaced_strip_prefix_are_rejected() {
    let yaml = "\
listeners:
  - { name: a, address: 127.0.0.1:1 }
  - { name: a, address: 127.0.0.1:1 }
upstreams: { u: { targets: [{ address: 127.0.0.1:2 }] } }
routes:
  - { name: r, match: { path: /x }, upstream: u, strip_prefix: true }
  - { name: r, match: { path: /y }, upstream: u }
";
    let p = problems(yaml);
    assert!(p.iter().any(|m| m.contains("duplicate listener name \"a\"")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("address 127.0.0.1:1 is already used")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("strip_prefix needs a `path_prefix` match")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("duplicate route name \"r\"")), "{p:#?}");
}

#[test]
fn an_unreadable_upstream_does_not_cause_a_second_unknown_upstream_error() {
    let yaml = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
upstreams: { u: { targetz: [] } }
routes: [{ name: r, match: { path: /x }, upstream: u }]
";
    let p = problems(yaml);
    assert!(!p.iter().any(|m| m.contains("unknown upstream")), "{p:#?}");
}

#[test]
fn workers_must_be_a_sensible_count() {
    let base = "listeners: [{ name: a, address: 127.0.0.1:1 }]\n";
    assert_eq!(check(&format!("{base}workers: 2\n")).expect("valid").workers, Some(2));
    assert_eq!(check(base).expect("valid").workers, None);
    let p = problems(&format!("{base}workers: 0\n"));
    assert_eq!(p, ["2:10: workers: workers must be between 1 and 1024 (leave it out for one per CPU)"]);
}

#[test]
fn balancer_settings_are_checked() {
    let yaml = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
upstreams:
  u:
    targets: [{ address: 127.0.0.1:2, weight: 0 }]
    balance: round_robbin
    hash_on: header:x-user
  v:
    targets: [{ address: 127.0.0.1:3 }]
    balance: consistent_hash
    hash_on: body
";
    let p = problems(yaml);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p[0].contains("upstreams.u.targets[0].weight: weight must be between 1 and 1000"), "{p:#?}");
    assert!(p[1].contains("unknown balancer `round_robbin`; did you mean `round_robin`?"), "{p:#?}");
    assert!(p[2].contains("hash_on only applies to `balance: consistent_hash`"), "{p:#?}");
    assert!(p[3].contains("invalid hash_on \"body\""), "{p:#?}");
}

#[test]
fn health_settings_are_checked() {
    let yaml = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
upstreams:
  u:
    targets: [{ address: 127.0.0.1:2 }]
    health_check: { path: /h, interval: 1s, timeout: 2s, unhealthy_threshold: 0, expect_status: 200-700 }
    passive_health: { consecutive_failures: 3, max_ejected_percent: 120 }
";
    let p = problems(yaml);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        p.iter().any(|m| m.contains("health_check.timeout: the health check timeout must not exceed its interval")),
        "{p:#?}"
    );
    assert!(p.iter().any(|m| m.contains("unhealthy_threshold must be between 1 and 100")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("invalid expect_status \"200-700\"")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("max_ejected_percent must be between 0 and 100")), "{p:#?}");
}

#[test]
fn retry_settings_are_checked() {
    let yaml = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
upstreams:
  u:
    targets: [{ address: 127.0.0.1:2 }]
    retry: { attempts: 0, on: [connect_failure, 404, nope], budget: 150%, backoff: { base: 1s, max: 10ms } }
    slow_start: 30s
";
    let p = problems(yaml);
    assert_eq!(p.len(), 5, "{p:#?}");
    assert!(p.iter().any(|m| m.contains("attempts must be between 1 and 10")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("unknown retry condition \"404\"")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("unknown retry condition \"nope\"")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("invalid budget \"150%\"")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("backoff max must be at least its base")), "{p:#?}");
    let ok = check(
        "listeners: [{ name: a, address: 127.0.0.1:1 }]\nupstreams: { u: { targets: [{ address: 127.0.0.1:2 }], retry: { on: [reset, 503] } } }\n",
    )
    .expect("valid");
    let retry = &ok.upstreams[0].1.as_ref().expect("upstream").retry;
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.on, RetryOn { connect_failure: false, reset: true, timeout: false, statuses: vec![503] });
}

#[test]
fn a_target_listed_twice_is_an_error() {
    let p = problems(
        "listeners: [{ name: a, address: 127.0.0.1:1 }]\nupstreams: { u: { targets: [{ address: 127.0.0.1:2 }, { address: 127.0.0.1:2 }] } }\n",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("upstreams.u.targets: target 127.0.0.1:2 is listed twice"), "{p:#?}");
}

#[test]
fn port_zero_addresses_never_clash_and_a_public_admin_needs_a_token() {
    check("listeners: [{ name: a, address: 127.0.0.1:0 }, { name: b, address: 127.0.0.1:0 }]\nadmin: { address: 127.0.0.1:0 }\n")
        .expect("port 0 is any free port");
    let p = problems("listeners: [{ name: a, address: 127.0.0.1:1 }]\nadmin: { address: 0.0.0.0:9901 }\n");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("admin address 0.0.0.0:9901 is not loopback; set admin.token"), "{p:#?}");
    check("listeners: [{ name: a, address: 127.0.0.1:1 }]\nadmin: { address: 0.0.0.0:9901, token: s3cret }\n")
        .expect("valid");
}

#[test]
fn log_level_is_checked() {
    let p = problems("listeners: [{ name: a, address: 127.0.0.1:1 }]\nlog_level: loud\n");
    assert_eq!(p, ["2:12: log_level: unknown log level \"loud\"; expected one of: error, warn, info, debug, trace"]);
    assert_eq!(
        check("listeners: [{ name: a, address: 127.0.0.1:1 }]\nlog_level: debug\n").expect("valid").log_level,
        "debug"
    );
}

const MIDDLEWARE: &str = "\
listeners: [{ name: public, address: 127.0.0.1:8080 }]
upstreams: { users: { targets: [{ address: 127.0.0.1:9001 }] } }
middleware:
  web-cors:
    cors:
      allow_origins: [\"https://app.example.com\", \"https://*.example.org\"]
      allow_methods: [GET, POST, PUT, DELETE]
      allow_headers: [authorization, content-type]
      expose_headers: [x-request-id]
      allow_credentials: true
      max_age: 10m
  jwt-auth:
    jwt:
      algorithms: [RS256, ES256]
      jwks_url: http://127.0.0.1:7000/.well-known/jwks.json
      jwks_refresh: 5m
      issuer: https://auth.example.com
      audience: [api]
      leeway: 30s
      required_claims: [sub, exp]
      forward_claims: { x-user-id: sub, x-scopes: scope }
      token_from: header:authorization
  api-keys:
    api_key:
      header: x-api-key
      keys: [{ id: mobile, key_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }]
  internal-only:
    ip_filter: { allow: [10.0.0.0/8, 127.0.0.1/32], deny: [] }
  per-client:
    rate_limit:
      key: client_ip
      rate: 100/s
      burst: 200
      store: local
      on_store_error: allow
  add-headers:
    headers:
      request:  { set: { x-gateway: ferroway }, remove: [x-internal-debug] }
      response: { set: { strict-transport-security: \"max-age=31536000\" }, remove: [server] }
  security-headers:
    security_headers: {}
trusted_proxies: [10.0.0.0/8]
redis:
  url: redis://127.0.0.1:6379
routes:
  - name: users
    match: { path_prefix: /api/users }
    upstream: users
    middleware: [internal-only, per-client, jwt-auth, web-cors, add-headers]
";

#[test]
fn the_documented_middleware_example_is_valid() {
    let c = check(MIDDLEWARE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.middleware.len(), 7);
    assert_eq!(c.routes[0].middleware.len(), 5);
    let MiddlewareKind::RateLimit(rl) = &c.middleware[4].kind else { panic!("rate_limit") };
    assert_eq!((rl.rate.count, rl.burst), (100, 200));
}

#[test]
fn middleware_problems_are_explained_at_their_line() {
    let yaml = "\
listeners: [{ name: public, address: 127.0.0.1:8080 }]
upstreams: { up: { targets: [{ address: 127.0.0.1:9001 }] } }
middleware:
  auth:
    jwt: { algorithms: [none, HS256], secret: short }
  limit:
    rate_limit: { rate: 100/fortnight }
  shared:
    rate_limit: { rate: 100/s, store: redis }
  bykey:
    rate_limit: { rate: 1/s, key: \"claim:sub\" }
  cors:
    corz: {}
  keys:
    api_key: { keys: [{ id: a, key_sha256: plaintext-key }] }
  hdr:
    headers: { request: { set: { x-a: \"${requestid}\" } } }
routes:
  - { name: r, upstream: up, match: { path: / }, middleware: [aut, bykey, bykey, cors] }
";
    let got = problems(yaml);
    let expect = [
        "5:25: middleware.auth.jwt.algorithms[0]: algorithm \"none\" is never accepted",
        "5:47: middleware.auth.jwt.secret: the secret must be at least 32 bytes",
        "7:25: middleware.limit.rate_limit.rate: invalid rate \"100/fortnight\"",
        "8:3: middleware.shared: store: redis needs a top-level `redis:",
        "13:5: middleware.cors.corz: unknown middleware kind `corz`; did you mean `cors`?",
        "15:44: middleware.keys.api_key.keys[0].key_sha256: expected the key's SHA-256 as 64 hex digits",
        "17:39: middleware.hdr.headers.request.set.x-a: unknown variable ${requestid}; did you mean ${request_id}?",
        "19:63: routes[0].middleware[0]: unknown middleware \"aut\"; did you mean \"auth\"?",
        "19:68: routes[0].middleware[1]: rate limit \"bykey\" is keyed on claim: but no jwt middleware runs before it",
        "19:75: routes[0].middleware[2]: middleware \"bykey\" is listed twice in this route",
    ];
    // `cors` failed to decode (reported above): naming it is not a second problem.
    assert_eq!(got.len(), expect.len(), "{}", got.join("\n"));
    for e in expect {
        assert!(got.iter().any(|g| g.starts_with(e)), "missing {e:?} in:\n{}", got.join("\n"));
    }
}

#[test]
fn a_jwt_key_file_is_read_and_checked_by_check() {
    let yaml = "\
listeners: [{ name: public, address: 127.0.0.1:8080 }]
middleware:
  auth: { jwt: { algorithms: [RS256], public_key_file: /nonexistent/key.pem } }
  mixed: { jwt: { algorithms: [HS256], public_key_file: /nonexistent/key.pem } }
";
    let got = problems(yaml);
    assert!(
        got.iter()
            .any(|g| g.starts_with("3:56: middleware.auth.jwt.public_key_file: cannot read /nonexistent/key.pem")),
        "{got:?}"
    );
    assert!(got.iter().any(|g| g.contains("HS256 needs a secret, not a public key")), "{got:?}");
}

#[test]
fn acme_settings_are_checked_with_their_lines() {
    let yaml = "\
listeners:
  - name: https
    address: 127.0.0.1:8443
    tls:
      acme:
        domains: [api.example.com, '*.example.com', 10.0.0.1]
        email: ops
        directory: http://ca.example.com/dir
        challenge: dns-01
  - name: both
    address: 127.0.0.1:8444
    tls:
      certificates: []
      acme: { domains: [a.example.com], cache_dir: /tmp/acme, challenge: http-01 }
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u }]
";
    let p = problems(yaml);
    let has = |prefix: &str, needle: &str| has_problem(&p, prefix, needle);
    has("6:9: listeners[0].tls.acme:", "missing required key `cache_dir`");
    has("6:36: listeners[0].tls.acme.domains[1]:", "wildcard certificates need the dns-01 challenge");
    has("6:53: listeners[0].tls.acme.domains[2]:", "is not a DNS name");
    has("7:16: listeners[0].tls.acme.email:", "not an email address");
    has("8:20: listeners[0].tls.acme.directory:", "https URL of an ACME directory");
    has("9:20: listeners[0].tls.acme.challenge:", "expected tls-alpn-01 or http-01");
    has("13:21: listeners[1].tls.certificates:", "either `certificates` or `acme`, not both");
    has("14:13: listeners[1].tls.acme:", "the http-01 challenge is answered on a plain HTTP listener");
}

#[test]
fn path_filter_globs_are_checked() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080 }]
middleware:
  f:
    path_filter:
      deny: [\"/ok/**\", \"internal/**\", \"/a/[b\"]
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u, middleware: [f] }]
";
    let p = problems(yaml);
    assert!(
        p.iter().any(|m| m.starts_with("5:24: middleware.f.path_filter.deny[1]:") && m.contains("starts with /")),
        "{p:#?}"
    );
    assert!(p.iter().any(|m| m.starts_with("5:39: middleware.f.path_filter.deny[2]: invalid glob")), "{p:#?}");
}

#[test]
fn compress_settings_are_checked() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080 }]
middleware:
  z:
    compress:
      algorithms: [br, deflate, br]
      min_size: lots
      content_types: [text/*, json, '*/html']
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u, middleware: [z] }]
";
    let p = problems(yaml);
    let has = |prefix: &str, needle: &str| has_problem(&p, prefix, needle);
    has("5:24: middleware.z.compress.algorithms[1]:", "expected br, zstd or gzip");
    has("5:33: middleware.z.compress.algorithms[2]:", "listed twice");
    has("6:17: middleware.z.compress.min_size:", "");
    has("7:31: middleware.z.compress.content_types[1]:", "not a media type");
    has("7:37: middleware.z.compress.content_types[2]:", "not a media type");
}

#[test]
fn cache_settings_are_checked() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080 }]
middleware:
  c:
    cache:
      max_size: 1MiB
      max_object_size: 2MiB
      key: [method, host, cookie]
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u, middleware: [c] }]
";
    let p = problems(yaml);
    has_problem(&p, "6:24: middleware.c.cache.max_object_size:", "at most max_size");
    has_problem(&p, "7:27: middleware.c.cache.key[2]:", "expected method, host, path or query");
    has_problem(&p, "7:12: middleware.c.cache.key:", "must include `path`");
}

#[test]
fn tracing_needs_an_http_otlp_endpoint() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080 }]
tracing: { otlp_endpoint: \"grpc://collector:4317\" }
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u }]
";
    has_problem(&problems(yaml), "2:27: tracing.otlp_endpoint:", "http:// base URL of an OTLP/HTTP receiver");
}

#[test]
fn access_log_templates_are_checked() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080 }]
access_log: { format: template, template: \"{client} {staus} }\" }
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u }]
";
    has_problem(&problems(yaml), "2:43: access_log.template:", "unknown field {staus}; did you mean {status}?");
}

/// A header rule or a forwarded claim that changed a framing or connection field would break
/// the message it is in (a response with the upstream's length and a rule's
/// `Transfer-Encoding: chunked` went out with both before this check).
#[test]
fn middleware_cannot_change_the_fields_the_gateway_frames_messages_with() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080 }]
middleware:
  rules:
    headers:
      request: { set: { content-length: \"0\" }, remove: [host] }
      response: { append: { transfer-encoding: chunked }, remove: [server] }
  auth: { jwt: { algorithms: [HS256], secret: \"0123456789abcdef0123456789abcdef\", forward_claims: { connection: sub } } }
upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }
routes: [{ name: r, match: { path_prefix: / }, upstream: u, middleware: [rules, auth] }]
";
    let p = problems(yaml);
    let has = |prefix: &str, needle: &str| has_problem(&p, prefix, needle);
    has(
        "5:25: middleware.rules.headers.request.set.content-length:",
        "\"content-length\" cannot be changed by middleware",
    );
    has("5:57: middleware.rules.headers.request.remove[0]:", "the route's `host_header` sets it");
    has("6:29: middleware.rules.headers.response.append.transfer-encoding:", "cannot be changed by middleware");
    has("7:101: middleware.auth.jwt.forward_claims.connection:", "cannot be changed by middleware");
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn keepalive_park_after_is_a_duration_above_zero_or_off() {
    let base = "listeners: [{ name: l, address: 127.0.0.1:8080 }]\n\
                upstreams: { u: { targets: [{ address: 127.0.0.1:9000 }] } }\n\
                routes: [{ name: r, match: { path_prefix: / }, upstream: u }]\n";
    let limits = |v: &str| check(&format!("{base}limits: {{ keepalive_park_after: {v} }}\n")).map(|c| c.limits);
    assert_eq!(check(base).map(|c| c.limits.keepalive_park_after).ok(), Some(Some(Duration::from_secs(1))));
    assert_eq!(limits("250ms").ok().map(|l| l.keepalive_park_after), Some(Some(Duration::from_millis(250))));
    assert_eq!(limits("off").ok().map(|l| l.keepalive_park_after), Some(None));
    let p = problems(&format!("{base}limits: {{ keepalive_park_after: 0s }}\n"));
    assert_eq!(
        p,
        ["4:33: limits.keepalive_park_after: 0s would park a connection at every pause; use off to never park; \
          expected a duration above zero such as 1s or 500ms, or off"]
    );
    let p = problems(&format!("{base}limits: {{ keepalive_park_after: never }}\n"));
    has_problem(&p, "4:33: limits.keepalive_park_after:", "invalid duration \"never\"");
}
