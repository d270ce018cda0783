//! Settings: the embedded `config/default.toml`, then an optional file, then `BELAY__*`
//! environment variables, each layer overriding the one before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The defaults, compiled in so the binary runs from any folder.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub sse: SseSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub matchmaking: MatchmakingSettings,
    pub retention: RetentionSettings,
    pub redis: RedisSettings,
    pub cluster: ClusterSettings,
    pub push: PushSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PushSettings {
    /// Kinds pushed to climbers with no live session (each climber can turn any off). Empty:
    /// the matchmaking kinds, likes, achievements and rank changes.
    pub kinds: Vec<String>,
    /// A climber who comes online within this long after an event is not pushed for it.
    pub grace_ms: u64,
    /// Pushes in flight at once from this node.
    pub concurrency: usize,
    /// Devices per climber; registering one more forgets the least recently seen.
    pub max_devices_per_user: u32,
    /// Devices not registered again for this long are forgotten.
    pub device_max_idle_days: u32,
    /// How often the node looks for due pushes when no event of its own woke it.
    pub poll_ms: u64,
    pub fcm: FcmSettings,
    pub webpush: WebPushSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FcmSettings {
    /// The Firebase service-account JSON (its `project_id` and `token_uri` are used). Empty:
    /// no FCM.
    pub credentials_file: String,
    /// Where sends go.
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebPushSettings {
    /// The VAPID private key, base64url (`belay vapid-keys` prints a new pair). Empty: no Web
    /// Push.
    pub vapid_private_key: SecretString,
    /// Who push services can reach about this sender: `mailto:` or an `https://` URL.
    pub subject: String,
    /// Accept `http://` endpoints on loopback addresses: for a local fake push service only.
    pub allow_loopback_http: bool,
}

impl PushSettings {
    /// The kinds pushed by default, checked.
    pub fn push_kinds(&self) -> anyhow::Result<Vec<crate::domain::EventKind>> {
        use crate::domain::EventKind;
        if self.kinds.is_empty() {
            return Ok(EventKind::ALL
                .into_iter()
                .filter(|k| crate::push::push_worthy_by_default(*k))
                .collect());
        }
        self.kinds
            .iter()
            .map(|name| {
                EventKind::parse(name)
                    .filter(|k| *k != EventKind::Unread)
                    .with_context(|| format!("push.kinds: unknown kind {name:?}"))
            })
            .collect()
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.push_kinds()?;
        anyhow::ensure!(
            self.concurrency >= 1 && self.max_devices_per_user >= 1,
            "push.concurrency and push.max_devices_per_user must be at least 1"
        );
        anyhow::ensure!(
            self.device_max_idle_days >= 1 && self.poll_ms >= 10,
            "push.device_max_idle_days must be at least 1 and push.poll_ms at least 10"
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `redis://host:port`: cluster mode (a standalone Redis or one node of a Redis Cluster).
    /// Empty: a single node, nothing else started.
    pub url: SecretString,
}

impl RedisSettings {
    /// Cluster mode is on.
    pub fn enabled(&self) -> bool {
        self.url().is_some()
    }

    /// The Redis URL when cluster mode is on.
    pub fn url(&self) -> Option<&str> {
        Some(self.url.expose_secret().trim()).filter(|u| !u.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// This node's name in Redis (presence, channels). Empty: a random one at each start.
    pub node_id: String,
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// A node's presence entries expire this long after its last refresh (a crashed node).
    pub presence_ttl_secs: u64,
    /// How often a node refreshes its presence entries.
    pub presence_refresh_secs: u64,
    /// How often the bridge publishes a probe to its own channel.
    pub probe_every_ms: u64,
    /// A probe not back within this long means the subscription is dead: resubscribe.
    pub probe_timeout_ms: u64,
    /// How long the matchmaker lease lasts without a renewal; a dead leader is replaced after
    /// about this long (renewals every third of it).
    pub lease_ttl_ms: u64,
    /// How long a request waits for the matchmaker leader's answer before a 503.
    pub command_timeout_ms: u64,
}

impl ClusterSettings {
    fn validate(&self) -> anyhow::Result<()> {
        let name_ok = |s: &str| {
            s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        anyhow::ensure!(
            name_ok(&self.node_id),
            "cluster.node_id: at most 64 of [A-Za-z0-9_.-]"
        );
        anyhow::ensure!(
            !self.key_prefix.is_empty() && name_ok(&self.key_prefix),
            "cluster.key_prefix: 1 to 64 of [A-Za-z0-9_.-]"
        );
        anyhow::ensure!(
            self.presence_refresh_secs >= 1 && self.presence_ttl_secs > self.presence_refresh_secs,
            "cluster.presence_ttl_secs must be longer than cluster.presence_refresh_secs (at least 1)"
        );
        anyhow::ensure!(
            self.probe_every_ms >= 10 && self.probe_timeout_ms > self.probe_every_ms,
            "cluster.probe_timeout_ms must be longer than cluster.probe_every_ms (at least 10)"
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Read notifications last changed longer ago than this are deleted.
    pub max_age_days: u32,
    /// Read notifications beyond a user's newest this many are deleted.
    pub max_per_user: u32,
    /// How often the retention task runs.
    pub every_secs: u64,
    /// Rows one delete statement removes at most.
    pub batch: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MatchmakingSettings {
    pub ready_timeout_secs: u64,
    pub challenge_timeout_secs: u64,
    pub result_timeout_secs: u64,
    /// Largest page of `GET /v1/leaderboard`.
    pub max_leaderboard_page: u32,
    /// How the acceptable rating gap widens with waiting time.
    #[serde(default)]
    pub policy: crate::matchmaking::policy::Policy,
}

impl MatchmakingSettings {
    pub fn timing(&self) -> crate::matchmaking::engine::Timing {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        crate::matchmaking::engine::Timing {
            ready_ms: ms(self.ready_timeout_secs),
            challenge_ms: ms(self.challenge_timeout_secs),
            result_ms: ms(self.result_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub listen_backlog: u32,
    pub body_limit_bytes: usize,
    /// How long a request body may take to arrive, from the end of its head; 408 after.
    pub body_timeout_secs: u64,
    /// How long a request may wait for its answer (an event stream: for its response to start);
    /// 503 after.
    pub request_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub cors_allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long start-up retries a database that does not answer before giving up.
    pub connect_timeout_secs: u64,
}

impl DatabaseSettings {
    /// The URL without its password, for logs.
    pub fn url_for_logs(&self) -> String {
        redact_password(&self.url)
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`; other URLs unchanged.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = credentials
        .split_once(':')
        .map_or(credentials, |(user, _)| user);
    let secret = if credentials.contains(':') {
        ":***"
    } else {
        ""
    };
    let path = if rest.contains('/') {
        format!("/{path}")
    } else {
        String::new()
    };
    format!("{scheme}://{user}{secret}@{host}{path}")
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub dev_tokens: bool,
    pub jwt_secret: SecretString,
    pub api_key: SecretString,
    pub dev_secrets_file: PathBuf,
    pub dev_token_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SseSettings {
    pub heartbeat_secs: u64,
    pub retry_ms: u64,
    pub queue_capacity: usize,
    pub max_sessions_per_user: usize,
    pub replay_page: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_batch: usize,
    pub max_read_ids: usize,
    pub max_page: u32,
    pub user_requests_per_sec: u32,
    pub user_request_burst: u32,
    pub idempotency_ttl_secs: u64,
    /// Open connections from one IP address; 0 turns the cap off.
    pub connections_per_ip: u32,
    /// Open connections to this process; 0 derives it from the open-file limit.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: String,
}

impl Settings {
    /// Reads the layers from the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_with_env(file, None)
    }

    /// Reads the layers, taking environment variables from `env` when given (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> anyhow::Result<Settings> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        let environment = Environment::with_prefix("BELAY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("server.cors_allowed_origins")
            .source(env);
        let settings: Settings = builder
            .add_source(environment)
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every duration at most ten years: longer ones would overflow a clock reading plus the
    /// duration (a panic in `Instant + Duration`, a wrapped millisecond deadline) long before
    /// they meant anything.
    fn check_durations(&self) -> anyhow::Result<()> {
        const MAX_SECS: u64 = 10 * 365 * 24 * 3600;
        let ms = |v: u64| v / 1000;
        let days = |v: u32| u64::from(v) * 24 * 3600;
        let (s, mm, c, p) = (&self.server, &self.matchmaking, &self.cluster, &self.push);
        for (name, secs) in [
            ("server.body_timeout_secs", s.body_timeout_secs),
            ("server.request_timeout_secs", s.request_timeout_secs),
            ("server.shutdown_timeout_secs", s.shutdown_timeout_secs),
            (
                "database.connect_timeout_secs",
                self.database.connect_timeout_secs,
            ),
            ("auth.dev_token_ttl_secs", self.auth.dev_token_ttl_secs),
            ("sse.heartbeat_secs", self.sse.heartbeat_secs),
            ("sse.retry_ms", ms(self.sse.retry_ms)),
            (
                "limits.idempotency_ttl_secs",
                self.limits.idempotency_ttl_secs,
            ),
            ("matchmaking.ready_timeout_secs", mm.ready_timeout_secs),
            (
                "matchmaking.challenge_timeout_secs",
                mm.challenge_timeout_secs,
            ),
            ("matchmaking.result_timeout_secs", mm.result_timeout_secs),
            ("retention.max_age_days", days(self.retention.max_age_days)),
            ("retention.every_secs", self.retention.every_secs),
            ("cluster.presence_ttl_secs", c.presence_ttl_secs),
            ("cluster.presence_refresh_secs", c.presence_refresh_secs),
            ("cluster.probe_every_ms", ms(c.probe_every_ms)),
            ("cluster.probe_timeout_ms", ms(c.probe_timeout_ms)),
            ("cluster.lease_ttl_ms", ms(c.lease_ttl_ms)),
            ("cluster.command_timeout_ms", ms(c.command_timeout_ms)),
            ("push.grace_ms", ms(p.grace_ms)),
            ("push.poll_ms", ms(p.poll_ms)),
            ("push.device_max_idle_days", days(p.device_max_idle_days)),
        ] {
            anyhow::ensure!(
                secs <= MAX_SECS,
                "{name} is longer than ten years; give at most {MAX_SECS} seconds' worth"
            );
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mm = &self.matchmaking;
        anyhow::ensure!(
            mm.ready_timeout_secs > 0
                && mm.challenge_timeout_secs > 0
                && mm.result_timeout_secs > 0,
            "matchmaking timeouts must be at least one second"
        );
        anyhow::ensure!(
            mm.max_leaderboard_page > 0,
            "matchmaking.max_leaderboard_page must be positive"
        );
        anyhow::ensure!(
            (1..=65_535).contains(&self.server.listen_backlog),
            "server.listen_backlog must be between 1 and 65535"
        );
        anyhow::ensure!(
            self.server.body_timeout_secs >= 1,
            "server.body_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.server.request_timeout_secs >= 1,
            "server.request_timeout_secs must be at least 1"
        );
        // A body still arriving at the request's deadline would be cut off with a 503 that
        // blames the store, instead of the 408 that names the slow body.
        anyhow::ensure!(
            self.server.body_timeout_secs < self.server.request_timeout_secs,
            "server.body_timeout_secs must be below server.request_timeout_secs"
        );
        anyhow::ensure!(
            self.sse.queue_capacity >= 4,
            "sse.queue_capacity must be at least 4"
        );
        anyhow::ensure!(
            self.sse.heartbeat_secs >= 1,
            "sse.heartbeat_secs must be at least 1"
        );
        anyhow::ensure!(
            self.sse.replay_page >= 1,
            "sse.replay_page must be at least 1"
        );
        anyhow::ensure!(
            self.sse.max_sessions_per_user >= 1,
            "sse.max_sessions_per_user must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_batch >= 1,
            "limits.max_batch must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_page >= 1,
            "limits.max_page must be at least 1"
        );
        crate::store::Kind::of(&self.database.url).context("database.url")?;
        anyhow::ensure!(
            self.cluster.lease_ttl_ms >= 300 && self.cluster.command_timeout_ms >= 1,
            "cluster.lease_ttl_ms must be at least 300 and cluster.command_timeout_ms at least 1"
        );
        // A follower's request waits for the leader's answer; past the request deadline its
        // own 503 (and `GET /v1/me/match` afterwards) would never be reached.
        anyhow::ensure!(
            !self.redis.enabled()
                || self.cluster.command_timeout_ms
                    < self.server.request_timeout_secs.saturating_mul(1000),
            "cluster.command_timeout_ms must be below server.request_timeout_secs"
        );
        anyhow::ensure!(
            self.database.max_connections >= 1,
            "database.max_connections must be at least 1"
        );
        let retention = &self.retention;
        anyhow::ensure!(
            retention.max_age_days >= 1 && retention.max_per_user >= 1,
            "retention.max_age_days and retention.max_per_user must be at least 1"
        );
        anyhow::ensure!(
            retention.every_secs >= 1 && retention.batch >= 1,
            "retention.every_secs and retention.batch must be at least 1"
        );
        self.check_durations()?;
        self.cluster.validate()?;
        self.push.validate()?;
        if self.redis.enabled() {
            let url = self.redis.url.expose_secret();
            anyhow::ensure!(
                url.starts_with("redis://"),
                "redis.url must start with redis:// (or be empty for a single node)"
            );
        }
        for origin in &self.server.cors_allowed_origins {
            anyhow::ensure!(
                valid_origin(origin),
                "server.cors_allowed_origins: {origin:?} is not \"*\" or scheme://host[:port]"
            );
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.sse.heartbeat_secs)
    }
}

/// `*`, or an origin as browsers send it: `http(s)://host[:port]`, no path.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains('/')
        && origin
            .parse::<actix_web::http::Uri>()
            .is_ok_and(|u| u.host().is_some())
}

/// Secrets in force after the dev fallback: never empty.
#[derive(Clone)]
pub struct Secrets {
    pub jwt_secret: SecretString,
    pub api_key: SecretString,
}

impl AuthSettings {
    /// Uses the configured secrets; when one is empty and dev tokens are on, generates it once and
    /// keeps it in `dev_secrets_file` so tokens survive a restart. Without dev tokens an empty
    /// secret is a startup error.
    pub fn resolve_secrets(&self) -> anyhow::Result<Secrets> {
        let jwt = self.jwt_secret.expose_secret();
        let key = self.api_key.expose_secret();
        if !jwt.is_empty() && !key.is_empty() {
            return Ok(Secrets {
                jwt_secret: self.jwt_secret.clone(),
                api_key: self.api_key.clone(),
            });
        }
        anyhow::ensure!(
            self.dev_tokens,
            "auth.jwt_secret and auth.api_key must be set (BELAY__AUTH__JWT_SECRET, BELAY__AUTH__API_KEY) when auth.dev_tokens is off"
        );
        let stored = load_or_create_dev_secrets(&self.dev_secrets_file)?;
        let pick = |configured: &str, generated: String| {
            SecretString::from(if configured.is_empty() {
                generated
            } else {
                configured.to_owned()
            })
        };
        Ok(Secrets {
            jwt_secret: pick(jwt, stored.jwt_secret),
            api_key: pick(key, stored.api_key),
        })
    }
}

#[derive(serde::Serialize, Deserialize)]
struct DevSecrets {
    jwt_secret: String,
    api_key: String,
}

fn load_or_create_dev_secrets(path: &Path) -> anyhow::Result<DevSecrets> {
    if let Ok(raw) = std::fs::read_to_string(path) {
        return serde_json::from_str(&raw)
            .with_context(|| format!("reading dev secrets from {}", path.display()));
    }
    let secrets = DevSecrets {
        jwt_secret: random_token(),
        api_key: random_token(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&secrets)?)
        .with_context(|| format!("writing dev secrets to {}", path.display()))?;
    tracing::warn!(file = %path.display(), "generated development secrets");
    Ok(secrets)
}

/// 244 random bits, hex encoded.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_the_single_node_setup() {
        let s = Settings::load_with_env(None, Some(HashMap::new())).unwrap();
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.server.port, 8080);
        assert!(s.database.url.starts_with("sqlite://data/"));
        assert!(s.auth.dev_tokens);
        assert_eq!(s.sse.max_sessions_per_user, 8);
        assert_eq!(s.server.listen_backlog, 4096);
    }

    #[test]
    fn cluster_mode_is_off_by_default_and_its_keys_are_checked() {
        let s = Settings::load_with_env(None, Some(HashMap::new())).unwrap();
        assert!(!s.redis.enabled());
        assert_eq!(s.cluster.key_prefix, "belay");
        assert_eq!(s.cluster.presence_ttl_secs, 30);
        for (key, bad) in [
            ("BELAY__CLUSTER__NODE_ID", "a b"),
            ("BELAY__CLUSTER__KEY_PREFIX", "{x}"),
            ("BELAY__CLUSTER__PRESENCE_REFRESH_SECS", "30"),
            ("BELAY__CLUSTER__PROBE_TIMEOUT_MS", "1000"),
            ("BELAY__REDIS__URL", "http://x"),
        ] {
            let env = HashMap::from([(key.to_owned(), bad.to_owned())]);
            assert!(
                Settings::load_with_env(None, Some(env)).is_err(),
                "{key}={bad}"
            );
        }
        let env = HashMap::from([(
            "BELAY__REDIS__URL".to_owned(),
            "redis://127.0.0.1:6379".to_owned(),
        )]);
        assert!(
            Settings::load_with_env(None, Some(env))
                .unwrap()
                .redis
                .enabled()
        );
    }

    #[test]
    fn the_request_deadline_is_positive_and_outlasts_a_body_and_a_cluster_command() {
        let load = |pairs: &[(&str, &str)]| {
            let env = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Settings::load_with_env(None, Some(env))
        };
        let s = load(&[]).unwrap();
        assert_eq!(s.server.request_timeout_secs, 8);
        assert!(s.server.request_timeout_secs < s.server.shutdown_timeout_secs);
        assert!(load(&[("BELAY__SERVER__REQUEST_TIMEOUT_SECS", "0")]).is_err());
        assert!(s.server.body_timeout_secs < s.server.request_timeout_secs);
        assert!(load(&[("BELAY__SERVER__BODY_TIMEOUT_SECS", "8")]).is_err());
        let redis = ("BELAY__REDIS__URL", "redis://127.0.0.1:6379");
        assert!(load(&[redis, ("BELAY__SERVER__REQUEST_TIMEOUT_SECS", "5")]).is_err());
        assert!(load(&[redis, ("BELAY__SERVER__REQUEST_TIMEOUT_SECS", "6")]).is_ok());
        // On one node there is no command to wait for.
        assert!(
            load(&[
                ("BELAY__SERVER__REQUEST_TIMEOUT_SECS", "2"),
                ("BELAY__SERVER__BODY_TIMEOUT_SECS", "1")
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_listen_backlog_outside_1_to_65535_is_refused() {
        for bad in ["0", "65536"] {
            let env = HashMap::from([("BELAY__SERVER__LISTEN_BACKLOG".to_owned(), bad.to_owned())]);
            assert!(Settings::load_with_env(None, Some(env)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_duration_past_ten_years_is_refused_by_name() {
        for (key, bad, fine) in [
            (
                "BELAY__MATCHMAKING__READY_TIMEOUT_SECS",
                "315360001",
                "315360000",
            ),
            (
                "BELAY__SERVER__BODY_TIMEOUT_SECS",
                "18446744073709551615",
                "7",
            ),
            ("BELAY__CLUSTER__COMMAND_TIMEOUT_MS", "315360001000", "5000"),
            ("BELAY__RETENTION__MAX_AGE_DAYS", "3651", "3650"),
            ("BELAY__PUSH__DEVICE_MAX_IDLE_DAYS", "4294967295", "270"),
        ] {
            let load = |v: &str| {
                Settings::load_with_env(None, Some(HashMap::from([(key.to_owned(), v.to_owned())])))
            };
            let error = format!("{:#}", load(bad).unwrap_err());
            let name = key["BELAY__".len()..].replace("__", ".").to_lowercase();
            assert!(error.contains(&name), "{key}={bad}: {error}");
            assert!(load(fine).is_ok(), "{key}={fine}");
        }
    }

    #[test]
    fn environment_variables_override_any_key() {
        let env = HashMap::from([
            ("BELAY__SERVER__PORT".to_owned(), "9000".to_owned()),
            (
                "BELAY__DATABASE__URL".to_owned(),
                "sqlite://elsewhere.db".to_owned(),
            ),
            ("BELAY__AUTH__API_KEY".to_owned(), "k-123".to_owned()),
            ("BELAY__AUTH__JWT_SECRET".to_owned(), "12345".to_owned()),
            ("BELAY__SSE__HEARTBEAT_SECS".to_owned(), "5".to_owned()),
            (
                "BELAY__SERVER__CORS_ALLOWED_ORIGINS".to_owned(),
                "https://app.example,http://localhost:3000".to_owned(),
            ),
        ]);
        let s = Settings::load_with_env(None, Some(env)).unwrap();
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.database.url, "sqlite://elsewhere.db");
        assert_eq!(s.auth.api_key.expose_secret(), "k-123");
        assert_eq!(s.auth.jwt_secret.expose_secret(), "12345");
        assert_eq!(s.sse.heartbeat_secs, 5);
        assert_eq!(
            s.server.cors_allowed_origins,
            ["https://app.example", "http://localhost:3000"]
        );
    }

    #[test]
    fn cors_origins_must_be_origins() {
        for bad in ["app.example", "https://app.example/", "ftp://x", "https://"] {
            let env = HashMap::from([(
                "BELAY__SERVER__CORS_ALLOWED_ORIGINS".to_owned(),
                bad.to_owned(),
            )]);
            assert!(Settings::load_with_env(None, Some(env)).is_err(), "{bad}");
        }
        assert!(valid_origin("*"));
        assert!(valid_origin("https://app.example:8443"));
    }

    #[test]
    fn production_example_refuses_to_start_without_secrets() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.toml");
        let s = Settings::load_with_env(Some(&path), Some(HashMap::new())).unwrap();
        assert!(!s.auth.dev_tokens);
        assert!(s.auth.resolve_secrets().is_err());
    }

    #[test]
    fn cluster_examples_name_a_database_server_and_redis_and_refuse_to_start_without_secrets() {
        for (file, kind) in [
            ("config/cluster.toml", crate::store::Kind::Postgres),
            ("config/cluster-mariadb.toml", crate::store::Kind::MySql),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let s = Settings::load_with_env(Some(&path), Some(HashMap::new())).unwrap();
            assert_eq!(
                crate::store::Kind::of(&s.database.url).unwrap(),
                kind,
                "{file}"
            );
            assert!(
                s.redis.url().is_some_and(|u| u.starts_with("redis://")),
                "{file}"
            );
            assert!(!s.auth.dev_tokens, "{file}");
            assert!(s.auth.resolve_secrets().is_err(), "{file}");
        }
    }

    #[test]
    fn database_urls_are_logged_without_their_password() {
        assert_eq!(
            redact_password("postgres://belay:s3cret@db:5432/belay"),
            "postgres://belay:***@db:5432/belay"
        );
        assert_eq!(
            redact_password("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact_password("redis://:pw@cache"), "redis://:***@cache");
        assert_eq!(
            redact_password("sqlite://data/belay.db"),
            "sqlite://data/belay.db"
        );
    }

    #[test]
    fn a_database_url_of_another_scheme_is_refused_naming_the_three() {
        let mut env = HashMap::new();
        env.insert(
            "BELAY__DATABASE__URL".to_owned(),
            "mongodb://db/belay".to_owned(),
        );
        let error = format!(
            "{:#}",
            Settings::load_with_env(None, Some(env)).unwrap_err()
        );
        for scheme in ["sqlite://", "postgres://", "mysql://"] {
            assert!(error.contains(scheme), "{error}");
        }
    }

    #[test]
    fn dev_secrets_are_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::load_with_env(None, Some(HashMap::new())).unwrap();
        s.auth.dev_secrets_file = dir.path().join("sub/dev.json");
        let first = s.auth.resolve_secrets().unwrap();
        let second = s.auth.resolve_secrets().unwrap();
        assert_eq!(
            first.jwt_secret.expose_secret(),
            second.jwt_secret.expose_secret()
        );
        assert_ne!(
            first.jwt_secret.expose_secret(),
            first.api_key.expose_secret()
        );
        assert!(!first.api_key.expose_secret().is_empty());
    }
}
