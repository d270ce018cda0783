//! A TCP proxy in front of a database server, which a test can cut off (every open connection
//! is closed and new ones are refused until it is resumed, as when the server goes away) or
//! stall (connections stay open and nothing more crosses them, as when the server hangs).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Server;

pub struct Proxy {
    pub port: u16,
    upstream: SocketAddr,
    /// `true` while the proxy forwards; connections end when it turns `false`.
    open: Arc<watch::Sender<bool>>,
    /// `true` once nothing more crosses the open connections.
    stalled: Arc<watch::Sender<bool>>,
    accepting: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let (stalled, _) = watch::channel(false);
        let stalled = Arc::new(stalled);
        let accepting = Some(tokio::spawn(accept(
            listener,
            upstream,
            open.clone(),
            stalled.clone(),
        )));
        Proxy {
            port,
            upstream,
            open,
            stalled,
            accepting,
        }
    }

    /// Stops forwarding but keeps every connection open: whatever waits for an answer waits
    /// until the proxy is cut or dropped.
    pub fn stall(&mut self) {
        self.stalled.send_replace(true);
    }

    /// Closes every connection and stops listening: connects are refused.
    pub fn cut(&mut self) {
        self.open.send_replace(false);
        if let Some(task) = self.accepting.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.open.send_replace(true);
        self.stalled.send_replace(false);
        self.accepting = Some(tokio::spawn(accept(
            listener,
            self.upstream,
            self.open.clone(),
            self.stalled.clone(),
        )));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    open: Arc<watch::Sender<bool>>,
    stalled: Arc<watch::Sender<bool>>,
) {
    while let Ok((mut client, _)) = listener.accept().await {
        let mut closed = open.subscribe();
        let mut stall = stalled.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let stalled = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                _ = closed.wait_for(|open| !*open) => false,
                _ = stall.wait_for(|stalled| *stalled) => true,
            };
            if stalled {
                // Both sockets stay open, unread, until the proxy is cut.
                let _ = closed.wait_for(|open| !*open).await.map(|_| ());
            }
        });
    }
}

/// The address `server` listens on, as its admin URL names it.
pub fn upstream(server: Server) -> SocketAddr {
    let admin = server.admin_url();
    let authority = admin
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.parse().unwrap()
}

/// `url` with its host and port replaced by the proxy's.
pub fn through(url: &str, server: Server, proxy: &Proxy) -> String {
    url.replace(
        &upstream(server).to_string(),
        &format!("127.0.0.1:{}", proxy.port),
    )
}
