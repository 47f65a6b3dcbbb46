//! The shared store: one Redis holds every gateway's TATs, and each decision is one atomic
//! Lua script run on the server's clock (so gateways' clocks need not agree). Scripts go by
//! EVALSHA, falling back to EVAL once per connection when the server does not know it yet.
//!
//! A decision waits at most the configured timeout; when Redis cannot answer in time the
//! middleware's `on_store_error` decides. The connection is made lazily and re-made by the
//! connection manager after a failure, so service resumes by itself when Redis returns.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// KEYS[1]: the key. ARGV[1]: emission interval T, ARGV[2]: limit B·T, both in microseconds.
/// Returns {admitted (1/0), TAT - now in microseconds}.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > limit then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], nxt, 'PX', math.ceil((nxt - now) / 1000) + 1)
return {1, nxt - now}
"#;

pub struct RedisStore {
    client: Result<redis::Client, String>,
    conn: OnceLock<Result<ConnectionManager, String>>,
    timeout: Duration,
    script: redis::Script,
    /// Whether the last decision failed, so failures and recovery are logged once each.
    failing: AtomicBool,
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> RedisStore {
        RedisStore {
            client: redis::Client::open(url).map_err(|e| e.to_string()),
            conn: OnceLock::new(),
            timeout,
            script: redis::Script::new(SCRIPT),
            failing: AtomicBool::new(false),
        }
    }

    fn connection(&self) -> Result<ConnectionManager, String> {
        self.conn
            .get_or_init(|| {
                let client = self.client.clone()?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
            })
            .clone()
    }

    /// `(admitted, TAT - now)` in microseconds, or why Redis could not say.
    pub async fn decide(&self, key: &str, interval_us: u64, limit_us: u64) -> Result<(bool, u64), String> {
        let result = async {
            let mut conn = self.connection()?;
            let mut invocation = self.script.key(key);
            invocation.arg(interval_us).arg(limit_us);
            let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok((admitted, ahead))) => Ok((admitted == 1, u64::try_from(ahead).unwrap_or(0))),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        }
        .await;
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limit store (Redis) is answering again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limit store (Redis) unreachable; on_store_error decides until it is back");
                }
            }
        }
        result
    }
}
