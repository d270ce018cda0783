//! Redis for the cluster tests: the machine's server (`BELAY_TEST_REDIS_URL`, default
//! 127.0.0.1:6379) for most tests, each under a key prefix of its own; servers the test owns (a
//! restartable one, a three-master Redis Cluster) started from the `redis-server` binary on free
//! ports. Without them a test says it skipped and why, unless services are required.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::free_port;
use super::services_required;

/// How long a started server may take to answer.
const START_WAIT: Duration = Duration::from_secs(10);

fn skip_or_fail(what: &str, why: &str) {
    if services_required() {
        panic!("{what} is required (BELAY_TEST_REQUIRE_SERVICES) but: {why}");
    }
    eprintln!("skipping: {what} is not available ({why})");
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Answers PING within a second.
pub fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// The port of a `redis://host:port` URL (6379 when it names none).
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(6379)
}

/// The machine's Redis, or `None` after saying why.
pub fn shared() -> Option<String> {
    let url = std::env::var("BELAY_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if answers(port_of(&url)) {
        Some(url)
    } else {
        skip_or_fail("Redis", &format!("nothing answers at {url}"));
        None
    }
}

fn binary() -> Option<PathBuf> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Some(PathBuf::from("redis-server"))
    } else {
        skip_or_fail("redis-server", "the binary is not on PATH");
        None
    }
}

/// A `redis-server` owned by the test, nothing kept on disk; killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl OwnRedis {
    pub fn start() -> Option<OwnRedis> {
        Self::start_with(free_port(), &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Option<OwnRedis> {
        binary()?;
        let mut server = OwnRedis {
            port,
            child: None,
            dir: tempfile::tempdir().ok()?,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        while !answers(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters on free ports; stopped when dropped.
pub struct OwnCluster {
    pub nodes: Vec<OwnRedis>,
}

impl OwnCluster {
    pub fn start() -> Option<OwnCluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = format!("nodes-{port}.conf");
            nodes.push(OwnRedis::start_with(
                port,
                &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
            )?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !created.is_ok_and(|s| s.success()) {
            skip_or_fail("a Redis Cluster", "redis-cli --cluster create failed");
            return None;
        }
        let deadline = Instant::now() + START_WAIT;
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(OwnCluster { nodes })
    }
}
