//! Connections to Redis, standalone or Cluster, behind one type: what the server is decides
//! which client is used and whether sharded Pub/Sub (`SSUBSCRIBE`/`SPUBLISH`, Redis >= 7) is.

use std::time::Duration;

use anyhow::Context;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedSender;

/// How long a connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server at `redis.url` is.
#[derive(Debug, Clone)]
pub struct Server {
    url: String,
    pub cluster: bool,
    pub sharded: bool,
}

impl Server {
    /// Asks the server what it is (version, cluster mode).
    pub async fn discover(url: &str) -> anyhow::Result<Server> {
        // RESP3: push messages (Pub/Sub) arrive on the same connection as replies.
        let url = if url.contains("protocol=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&protocol=resp3")
        } else {
            format!("{url}?protocol=resp3")
        };
        let client = redis::Client::open(url.as_str()).context("redis.url")?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting to Redis")?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .arg("cluster")
            .query_async(&mut conn)
            .await
            .context("INFO")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let major: u32 = field("redis_version")
            .and_then(|v| v.split('.').next()?.parse().ok())
            .unwrap_or(0);
        Ok(Server {
            url,
            cluster: field("cluster_enabled") == Some("1"),
            sharded: major >= 7,
        })
    }

    /// A connection for commands and publishing, reconnecting by itself.
    pub async fn commands(&self) -> anyhow::Result<Conn> {
        if self.cluster {
            return Ok(Conn::Cluster(
                self.cluster_client(None)?.get_async_connection().await?,
            ));
        }
        let client = redis::Client::open(self.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        Ok(Conn::Managed(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }

    /// The one subscriber connection of this node: messages and disconnects go to `push`.
    pub async fn subscriber(&self, push: UnboundedSender<PushInfo>) -> anyhow::Result<Conn> {
        if self.cluster {
            let client = self.cluster_client(Some(push))?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let client = redis::Client::open(self.url.as_str())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(push);
        Ok(Conn::Single(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }

    fn cluster_client(
        &self,
        push: Option<UnboundedSender<PushInfo>>,
    ) -> anyhow::Result<ClusterClient> {
        let mut builder = ClusterClient::builder(vec![self.url.clone()])
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(1);
        if let Some(push) = push {
            builder = builder.push_sender(push);
        }
        Ok(builder.build()?)
    }

    /// `SPUBLISH` where the server has it, else `PUBLISH`.
    pub fn publish(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(if self.sharded { "SPUBLISH" } else { "PUBLISH" });
        cmd.arg(channel).arg(payload);
        cmd
    }
}

/// One connection of either kind; cheap to clone (they multiplex).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Managed(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Subscribes to one channel and returns once the server confirmed it.
    pub async fn subscribe(&mut self, sharded: bool, channel: &str) -> anyhow::Result<()> {
        match (self, sharded) {
            (Conn::Cluster(c), true) => c.ssubscribe(channel).await?,
            (Conn::Cluster(c), false) => c.subscribe(channel).await?,
            // One channel per command: RESP3 answers `SSUBSCRIBE` with a confirmation the
            // connection takes as the reply.
            (Conn::Single(c), true) => {
                redis::cmd("SSUBSCRIBE")
                    .arg(channel)
                    .query_async::<Value>(c)
                    .await?;
            }
            (Conn::Single(c), false) => c.subscribe(channel).await?,
            (Conn::Managed(_), _) => anyhow::bail!("not a subscriber connection"),
        }
        Ok(())
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Managed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
