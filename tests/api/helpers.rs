//! `spawn_app`: the real server on port 0 with a fresh database, and an SSE client. The database
//! is a SQLite file, or with `BELAY_TEST_BACKEND=postgres` (or `mysql`) a fresh database on that
//! server (see `tests/support`), so the whole HTTP surface runs on each backend.

use std::collections::HashMap;
use std::time::Duration;

use belay::config::Settings;
use belay::startup::{Application, ShutdownHandle};
use eventsource_stream::{Event, EventStream, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

/// Generous bound on any single wait, so a broken build fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound on starting or stopping a node, so a stalled step names itself instead of hanging CI.
const STEP: Duration = Duration::from_secs(60);
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";

pub struct TestApp {
    pub address: String,
    pub api_key: String,
    pub client: reqwest::Client,
    pub shutdown: ShutdownHandle,
    /// The SQLite file of this app (unused on a database server).
    pub db_path: std::path::PathBuf,
    settings: Settings,
    _dir: tempfile::TempDir,
    _database: Option<std::sync::Arc<crate::support::Database>>,
}

/// The database server `BELAY_TEST_BACKEND` names, if any.
pub fn server_backend() -> Option<crate::support::Server> {
    match std::env::var("BELAY_TEST_BACKEND").as_deref() {
        Ok("postgres") => Some(crate::support::Server::Postgres),
        Ok("mysql") => Some(crate::support::Server::MySql),
        Ok("sqlite") | Ok("") | Err(_) => None,
        Ok(other) => panic!("BELAY_TEST_BACKEND={other}: expected sqlite, postgres or mysql"),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::load_with_env(None, Some(HashMap::new())).expect("settings");
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.server.shutdown_timeout_secs = 2;
    settings.database.url = format!("sqlite://{}/belay.db", dir.path().display());
    settings.auth.jwt_secret = JWT_SECRET.to_owned().into();
    settings.auth.api_key = format!("key-{}", uuid::Uuid::new_v4()).into();
    settings.auth.dev_secrets_file = dir.path().join("dev-secrets.json");
    let database = match server_backend() {
        Some(server) => {
            let database = crate::support::fresh_database(server)
                .await
                .unwrap_or_else(|| {
                    panic!("BELAY_TEST_BACKEND names {server:?}, which is not reachable")
                });
            settings.database.url = database.url.clone();
            Some(std::sync::Arc::new(database))
        }
        None => None,
    };
    configure(&mut settings);
    let db_path = dir.path().join("belay.db");
    start(settings, dir, db_path, database).await
}

async fn start(
    settings: Settings,
    dir: tempfile::TempDir,
    db_path: std::path::PathBuf,
    database: Option<std::sync::Arc<crate::support::Database>>,
) -> TestApp {
    let api_key = secrecy::ExposeSecret::expose_secret(&settings.auth.api_key).to_owned();
    let app = tokio::time::timeout(STEP, Application::build(settings.clone()))
        .await
        .unwrap_or_else(|_| panic!("the node did not start within {STEP:?} (store or migrations)"))
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_handle();
    actix_web::rt::spawn(app.run());
    TestApp {
        address,
        api_key,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        shutdown,
        db_path,
        settings,
        _dir: dir,
        _database: database,
    }
}

impl TestApp {
    /// Stops the node gracefully and starts a new one on the same database and secrets.
    pub async fn restart(self) -> TestApp {
        tokio::time::timeout(STEP, self.shutdown.shutdown())
            .await
            .unwrap_or_else(|_| panic!("restart: the node did not stop within {STEP:?}"));
        start(self.settings, self._dir, self.db_path, self._database).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn token(&self, user: &str) -> String {
        let body: Value = self
            .client
            .post(self.url("/v1/dev/token"))
            .json(&json!({ "user_id": user }))
            .send()
            .await
            .expect("dev token")
            .json()
            .await
            .expect("token json");
        body["token"].as_str().expect("token field").to_owned()
    }

    pub fn host_post(&self, path: &str) -> RequestBuilder {
        self.client
            .post(self.url(path))
            .header("X-Api-Key", &self.api_key)
    }

    pub async fn notify(&self, body: Value) -> Response {
        self.host_post("/v1/notify")
            .json(&body)
            .send()
            .await
            .expect("notify")
    }

    /// A like of `post` by `by` for `user`; panics unless it was stored.
    pub async fn like(&self, user: &str, post: &str, by: &str) -> Value {
        let response = self
            .notify(
                json!({"user_id": user, "kind": "post_liked", "data": {"post_id": post, "by": by}}),
            )
            .await;
        assert!(
            response.status().is_success(),
            "notify failed: {}",
            response.status()
        );
        response.json::<Value>().await.expect("notify json")["results"][0].clone()
    }

    /// `GET /v1/events` as a plain response, for checking refusals or reading raw bytes.
    pub async fn events_response(&self, token: &str) -> Response {
        self.get_as(token, "/v1/events").await
    }

    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("get")
    }

    pub async fn list(&self, token: &str, query: &str) -> Value {
        let response = self
            .get_as(token, &format!("/v1/notifications{query}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("list json")
    }

    /// `POST /v1/notifications/read`, expecting 200; the answer's JSON.
    pub async fn mark_read(&self, token: &str, body: Value) -> Value {
        let response = self
            .client
            .post(self.url("/v1/notifications/read"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("mark read");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("mark read json")
    }

    pub async fn metric(&self, name: &str) -> i64 {
        // Counters and gauges here are whole numbers.
        crate::support::process::metric(&self.client, &self.address, name).await as i64
    }

    /// Polls a metric until it equals `want` or [`WAIT`] passes.
    pub async fn wait_metric(&self, name: &str, want: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.metric(name).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {got}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens `GET /v1/events` with the token in the Authorization header.
    pub async fn open_stream(&self, token: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = self.client.get(self.url("/v1/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        SseClient::open(request).await
    }
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>>>>;

/// A real SSE client: reqwest's body stream parsed by `eventsource-stream`.
pub struct SseClient {
    pub response_headers: reqwest::header::HeaderMap,
    events: EventStream<ByteStream>,
}

impl SseClient {
    pub async fn open(request: RequestBuilder) -> SseClient {
        let response = request.send().await.expect("open stream");
        assert_eq!(response.status(), StatusCode::OK, "stream refused");
        let response_headers = response.headers().clone();
        let bytes: ByteStream = Box::pin(response.bytes_stream());
        SseClient {
            response_headers,
            events: bytes.eventsource(),
        }
    }

    /// The next event, or `None` when the stream ended. Panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next event; panics if the stream ended.
    pub async fn expect(&mut self) -> Event {
        self.next().await.expect("stream ended early")
    }

    /// The next event that is not `kind`.
    pub async fn expect_skipping(&mut self, kind: &str) -> Event {
        loop {
            let event = self.expect().await;
            if event.event != kind {
                return event;
            }
        }
    }

    /// Whether no event arrives within `quiet`.
    pub async fn is_quiet_for(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.events.next())
            .await
            .is_err()
    }
}

pub fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

/// Asserts a JSON error body with the given status and `error` kind.
pub async fn assert_error(response: Response, status: StatusCode, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"], kind, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}
