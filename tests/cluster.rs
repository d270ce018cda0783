//! Cluster mode end to end: real `belay` processes on one PostgreSQL database and one Redis
//! (the machine's, or servers the test owns), each test under a Redis key prefix of its own; the
//! delivery tests again on MariaDB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use belay::cluster::Presence;
use belay::domain::UserId;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::process::{Running, client, free_port, json_of, next, signal, start_with, wait_ready};
use support::proxy::Proxy;
use support::redis::{OwnCluster, OwnRedis, port_of, shared, unique_prefix};
use support::{Server, fresh_database};

const API_KEY: &str = "cluster-test-key";
const JWT_SECRET: &str = "cluster-test-secret-0123456789";

/// One `belay` node of a test cluster.
struct Node {
    base: String,
    _process: Running,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(database: &str, redis: &str, prefix: &str, extra: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut env = vec![
            ("BELAY__DATABASE__URL", database),
            ("BELAY__REDIS__URL", redis),
            ("BELAY__CLUSTER__KEY_PREFIX", prefix),
            ("BELAY__AUTH__API_KEY", API_KEY),
            ("BELAY__AUTH__JWT_SECRET", JWT_SECRET),
            ("BELAY__LIMITS__USER_REQUESTS_PER_SEC", "0"),
            ("BELAY__CLUSTER__PROBE_EVERY_MS", "200"),
            ("BELAY__CLUSTER__PROBE_TIMEOUT_MS", "800"),
        ];
        env.extend_from_slice(extra);
        let process = Running(start_with(dir.path(), port, &env));
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&client(), &base).await;
        Node {
            base,
            _process: process,
            _dir: dir,
        }
    }

    async fn token(&self, user: &str) -> String {
        json_of(
            client()
                .post(format!("{}/v1/dev/token", self.base))
                .json(&json!({"user_id": user})),
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An open stream of `user`, past its `unread` summary (so its presence is written).
    async fn stream(&self, user: &str) -> Stream {
        let response = client()
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(self.token(user).await)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "stream of {user}");
        let mut events = Box::pin(response.bytes_stream().eventsource());
        assert_eq!(next(&mut events).await.unwrap().event, "unread");
        events
    }

    async fn notify(&self, user: &str, post: &str) -> Value {
        let body =
            json!({"user_id": user, "kind": "post_liked", "data": {"post_id": post, "by": "zoe"}});
        let r = client()
            .post(format!("{}/v1/notify", self.base))
            .header("X-Api-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        support::process::metric(&client(), &self.base, name).await
    }

    async fn presence(&self, users: &[&str]) -> reqwest::Response {
        let query: Vec<String> = users.iter().map(|u| format!("user_id={u}")).collect();
        client()
            .get(format!("{}/v1/presence?{}", self.base, query.join("&")))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap()
    }

    async fn online(&self, user: &str) -> bool {
        let body: Value = self.presence(&[user]).await.json().await.unwrap();
        body["users"][0]["online"].as_bool().unwrap()
    }
}

type Stream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// The next event that is not a comment or an `unread` update.
async fn next_event(stream: &mut Stream) -> eventsource_stream::Event {
    loop {
        let e = next(stream).await.expect("the stream goes on");
        if e.event != "unread" {
            return e;
        }
    }
}

/// Nothing but heartbeats or `unread` for `wait`.
async fn quiet_for(stream: &mut Stream, wait: Duration) {
    let got = tokio::time::timeout(wait, async {
        loop {
            match stream.next().await {
                Some(Ok(e)) if e.event == "unread" => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(got.is_err(), "expected nothing, got {got:?}");
}

#[tokio::test]
async fn an_event_posted_on_one_node_reaches_the_users_sessions_on_the_others_and_only_those_nodes()
{
    posted_on_one_node_reaches_the_others(Server::Postgres).await;
}

#[tokio::test]
async fn an_event_posted_on_one_node_reaches_the_users_sessions_on_the_others_and_only_those_nodes_on_mariadb()
 {
    posted_on_one_node_reaches_the_others(Server::MySql).await;
}

async fn posted_on_one_node_reaches_the_others(server: Server) {
    let Some(redis) = shared() else { return };
    let Some(db) = fresh_database(server).await else {
        return;
    };
    let prefix = unique_prefix();
    let a = Node::start(&db.url, &redis, &prefix, &[]).await;
    let b = Node::start(&db.url, &redis, &prefix, &[]).await;
    let c = Node::start(&db.url, &redis, &prefix, &[]).await;
    let mut on_b = b.stream("ana").await;
    let mut on_c = c.stream("ana").await;
    let mut bob_on_b = b.stream("bob").await;

    a.notify("ana", "p1").await;
    for s in [&mut on_b, &mut on_c] {
        let e = next_event(s).await;
        assert_eq!((e.id.as_str(), e.event.as_str()), ("1", "post_liked"));
    }

    // bob is only on B: C hears nothing about him.
    let c_in = c.metric("belay_bridge_messages_in_total").await;
    let b_in = b.metric("belay_bridge_messages_in_total").await;
    a.notify("bob", "p2").await;
    assert_eq!(next_event(&mut bob_on_b).await.id, "1");
    assert_eq!(c.metric("belay_bridge_messages_in_total").await, c_in);
    assert_eq!(b.metric("belay_bridge_messages_in_total").await, b_in + 1.0);

    // A broadcast reaches every node's sessions.
    let r = client()
        .post(format!("{}/v1/broadcast", a.base))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"kind": "new_post", "data": {"post_id": "p9", "by": "cy", "title": "Hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut on_a = a.stream("cy").await;
    for s in [&mut on_b, &mut on_c, &mut bob_on_b] {
        assert_eq!(next_event(s).await.event, "new_post");
    }
    // cy connected after the broadcast: nothing stored, nothing replayed.
    quiet_for(&mut on_a, Duration::from_millis(300)).await;

    let ready: Value = json_of(client().get(format!("{}/readyz", a.base))).await;
    assert_eq!(ready["redis"], "up");
    assert_eq!(a.metric("belay_bridge_up").await, 1.0);
}

/// A burst of events for many users on one node: those for the same other node cross in shared
/// publishes, and every one arrives live, in order, with no gap left for the store to fill.
#[tokio::test]
async fn a_burst_crosses_in_shared_publishes_and_every_event_arrives_live_in_order() {
    burst_across_nodes(Server::Postgres).await;
}

#[tokio::test]
async fn a_burst_crosses_in_shared_publishes_and_every_event_arrives_live_in_order_on_mariadb() {
    burst_across_nodes(Server::MySql).await;
}

async fn burst_across_nodes(server: Server) {
    let Some(redis) = shared() else { return };
    let Some(db) = fresh_database(server).await else {
        return;
    };
    let prefix = unique_prefix();
    let a = Node::start(&db.url, &redis, &prefix, &[]).await;
    let b = Node::start(&db.url, &redis, &prefix, &[]).await;
    const USERS: usize = 20;
    const EACH: usize = 10;
    let mut streams = Vec::new();
    for u in 0..USERS {
        streams.push(b.stream(&format!("u{u}")).await);
    }
    let (in_before, gaps_before) = (
        b.metric("belay_bridge_messages_in_total").await,
        b.metric("belay_gaps_total").await,
    );
    let sends = (0..EACH).flat_map(|i| (0..USERS).map(move |u| (u, i)));
    futures_util::stream::iter(sends)
        .for_each_concurrent(64, |(u, i)| {
            let a = &a;
            async move {
                a.notify(&format!("u{u}"), &format!("p{i}")).await;
            }
        })
        .await;
    for (u, stream) in streams.iter_mut().enumerate() {
        for cursor in 1..=EACH {
            let e = next_event(stream).await;
            assert_eq!(e.id, cursor.to_string(), "u{u}");
        }
    }
    let total = (USERS * EACH) as f64;
    assert_eq!(
        b.metric("belay_bridge_messages_in_total").await - in_before,
        total
    );
    assert_eq!(
        b.metric("belay_gaps_total").await,
        gaps_before,
        "a gap was filled"
    );
    let out = a.metric("belay_bridge_messages_out_total").await;
    let publishes = a.metric("belay_bridge_publishes_total").await;
    assert_eq!(out, total);
    assert!(publishes < out, "{publishes} publishes for {out} messages");
}

#[tokio::test]
async fn presence_answers_for_the_cluster_and_the_session_cap_spans_nodes() {
    let Some(redis) = shared() else { return };
    let Some(db) = fresh_database(Server::Postgres).await else {
        return;
    };
    let prefix = unique_prefix();
    let cap = [("BELAY__SSE__MAX_SESSIONS_PER_USER", "2")];
    let a = Node::start(&db.url, &redis, &prefix, &cap).await;
    let b = Node::start(&db.url, &redis, &prefix, &cap).await;
    let first = a.stream("ana").await;
    let _second = b.stream("ana").await;

    let refused = client()
        .get(format!("{}/v1/events", b.base))
        .bearer_auth(b.token("ana").await)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429, "a third stream across two nodes");
    assert_eq!(b.metric("belay_sessions_refused_cluster_total").await, 1.0);

    let body: Value = b.presence(&["ana", "zed"]).await.json().await.unwrap();
    assert_eq!(
        body,
        json!({"users": [{"user_id": "ana", "online": true}, {"user_id": "zed", "online": false}]})
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = b.presence(&many).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    let r = client()
        .get(format!("{}/v1/presence?user_id=ana", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "host key required");

    // A closed stream gives its slot back, on every node's count.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(format!("{}/v1/events", b.base))
            .bearer_auth(b.token("ana").await)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_crashed_nodes_presence_expires() {
    let Some(redis) = shared() else { return };
    let Some(db) = fresh_database(Server::Postgres).await else {
        return;
    };
    let prefix = unique_prefix();
    let short = [
        ("BELAY__CLUSTER__PRESENCE_TTL_SECS", "2"),
        ("BELAY__CLUSTER__PRESENCE_REFRESH_SECS", "1"),
    ];
    let a = Node::start(&db.url, &redis, &prefix, &short).await;
    let mut b = Node::start(&db.url, &redis, &prefix, &short).await;
    let _dan = b.stream("dan").await;
    assert!(a.online("dan").await);
    // Refreshed: still online after the TTL.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(a.online("dan").await, "a live node keeps its entries");

    signal(&b._process.0, "KILL");
    let _ = b._process.0.wait();
    let killed = Instant::now();
    // Expiry is due within the TTL (2 s here); the bound allows three times that, so a loaded
    // machine does not fail it, while entries that never expire (or only at the default 30 s)
    // still would.
    while a.online("dan").await {
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "expired within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a crashed node's presence expired after {:?}",
        killed.elapsed()
    );
}

/// Cursors `1..=n` of one user's stream, each once and in order, within `wait`.
async fn expect_cursors(stream: &mut Stream, n: i64, wait: Duration) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while (seen.len() as i64) < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(e))) if e.event == "unread" => {}
            Ok(Some(Ok(e))) => seen.push(e.id.parse::<i64>().unwrap()),
            _ => break,
        }
    }
    assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "once each, in order");
}

#[tokio::test]
async fn a_redis_restart_mid_stream_loses_and_repeats_nothing() {
    redis_restart_mid_stream(Server::Postgres).await;
}

#[tokio::test]
async fn a_redis_restart_mid_stream_loses_and_repeats_nothing_on_mariadb() {
    redis_restart_mid_stream(Server::MySql).await;
}

async fn redis_restart_mid_stream(server: Server) {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let Some(db) = fresh_database(server).await else {
        return;
    };
    let prefix = unique_prefix();
    let a = Node::start(&db.url, &redis.url(), &prefix, &[]).await;
    let b = Node::start(&db.url, &redis.url(), &prefix, &[]).await;
    let users = ["u0", "u1", "u2", "u3"];
    // Each user has a session on each node; events are posted on both nodes in turn.
    let mut streams = Vec::new();
    for u in users {
        streams.push((u, a.stream(u).await));
        streams.push((u, b.stream(u).await));
    }
    let per_user = 40;
    let mut sent: HashMap<&str, i64> = HashMap::new();
    for i in 0..per_user {
        if i == per_user / 3 {
            redis.kill();
        }
        if i == per_user / 2 {
            redis.restart();
        }
        for (k, u) in users.iter().enumerate() {
            let node = if (i + k) % 2 == 0 { &a } else { &b };
            node.notify(u, &format!("p{i}")).await;
            *sent.entry(u).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (u, stream) in &mut streams {
        expect_cursors(stream, sent[u], Duration::from_secs(20)).await;
    }
    assert!(a.metric("belay_bridge_reconnects_total").await >= 1.0);
    assert!(b.metric("belay_bridge_catch_ups_total").await >= 4.0);
    let ready: Value = json_of(client().get(format!("{}/readyz", a.base))).await;
    assert_eq!(ready["redis"], "up");
}

#[tokio::test]
async fn while_redis_is_down_a_node_serves_its_own_users_and_says_so() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let Some(db) = fresh_database(Server::Postgres).await else {
        return;
    };
    let a = Node::start(&db.url, &redis.url(), &unique_prefix(), &[]).await;
    let mut ana = a.stream("ana").await;
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(format!("{}/readyz", a.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if r.json::<Value>().await.unwrap()["redis"] == "down" {
            break;
        }
        assert!(Instant::now() < deadline, "readyz says redis is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.metric("belay_bridge_up").await, 0.0);
    a.notify("ana", "p1").await;
    assert_eq!(next_event(&mut ana).await.id, "1");
    let _fresh = a.stream("bob").await;
}

#[tokio::test]
async fn cross_node_delivery_works_unchanged_on_a_redis_cluster() {
    let Some(cluster) = OwnCluster::start() else {
        return;
    };
    let Some(db) = fresh_database(Server::Postgres).await else {
        return;
    };
    let prefix = unique_prefix();
    let a = Node::start(&db.url, &cluster.nodes[0].url(), &prefix, &[]).await;
    let b = Node::start(&db.url, &cluster.nodes[1].url(), &prefix, &[]).await;
    let mut streams = Vec::new();
    for u in ["ana", "bob", "cy", "dee"] {
        streams.push(b.stream(u).await);
    }
    for u in ["ana", "bob", "cy", "dee"] {
        a.notify(u, "p1").await;
        a.notify(u, "p2").await;
    }
    for s in &mut streams {
        expect_cursors(s, 2, Duration::from_secs(10)).await;
    }
    assert!(a.online("dee").await);
    assert_eq!(b.metric("belay_bridge_up").await, 1.0);
}

/// A refresh rewrites every entry of a node, however many users it holds (the writes go out a
/// bounded number at a time), and a restarted node's boot clears every one it left.
#[tokio::test]
async fn a_refresh_rewrites_and_a_boot_clears_every_entry_of_a_node_with_many_users() {
    use std::sync::Arc;

    use belay::cluster::conn::Server as RedisServer;
    use belay::cluster::keys::Keys;
    use belay::cluster::{Claim, RedisPresence};
    use belay::metrics::Metrics;

    let Some(redis) = shared() else { return };
    let keys = Keys::new(&unique_prefix(), "n1");
    let mut conn = RedisServer::discover(&redis)
        .await
        .unwrap()
        .commands()
        .await
        .unwrap();
    let presence = |conn| {
        Arc::new(RedisPresence::new(
            conn,
            keys.clone(),
            8,
            Duration::from_secs(30),
            Arc::new(Metrics::default()),
        ))
    };
    let node = presence(conn.clone());
    let users: Vec<UserId> = (0..300)
        .map(|i| UserId::parse(format!("u{i}")).unwrap())
        .collect();
    let mut slots = Vec::new();
    for user in &users {
        match node.claim(user).await {
            Claim::Granted(slot) => slots.push(slot),
            Claim::Refused => panic!("{user:?} refused"),
        }
    }
    let field = |conn: &mut belay::cluster::conn::Conn, user: &UserId| {
        let key = keys.user_sessions(user);
        let mut conn = conn.clone();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("n1")
                .query_async::<Option<String>>(&mut conn)
                .await
                .unwrap()
        }
    };

    // Redis loses every entry (a restart without persistence); the refresh writes them all.
    for user in &users {
        redis::cmd("DEL")
            .arg(keys.user_sessions(user))
            .exec_async(&mut conn)
            .await
            .unwrap();
    }
    node.refresh().await.unwrap();
    for user in &users {
        let value = field(&mut conn, user).await;
        assert!(
            value.as_deref().is_some_and(|v| v.starts_with("1:")),
            "{user:?}: {value:?}"
        );
    }

    // The node crashed (its slots are never given back); its next run clears what it left.
    std::mem::forget(slots);
    presence(conn.clone()).clear_own().await.unwrap();
    for user in &users {
        assert_eq!(field(&mut conn, user).await, None, "{user:?}");
    }
}

/// RedisPresences on the machine's Redis under one fresh prefix, one per node id given, made in
/// order (a moment apart, so a later one's change numbers are newer); None, with the reason
/// printed, where Redis is absent.
async fn presences<const N: usize>(
    nodes: [&str; N],
) -> Option<[std::sync::Arc<belay::cluster::RedisPresence>; N]> {
    Some(presences_on(&shared()?, nodes).await)
}

/// [`presences`] on the Redis at `redis`.
async fn presences_on<const N: usize>(
    redis: &str,
    nodes: [&str; N],
) -> [std::sync::Arc<belay::cluster::RedisPresence>; N] {
    use belay::cluster::conn::Server as RedisServer;
    use belay::cluster::keys::Keys;
    use belay::metrics::Metrics;

    let prefix = unique_prefix();
    let conn = RedisServer::discover(redis)
        .await
        .unwrap()
        .commands()
        .await
        .unwrap();
    let mut made = Vec::new();
    for node in nodes {
        made.push(std::sync::Arc::new(belay::cluster::RedisPresence::new(
            conn.clone(),
            Keys::new(&prefix, node),
            8,
            Duration::from_secs(30),
            std::sync::Arc::new(Metrics::default()),
        )));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    made.try_into().ok().unwrap()
}

fn granted(claim: belay::cluster::Claim) -> belay::cluster::presence::PresenceSlot {
    match claim {
        belay::cluster::Claim::Granted(slot) => slot,
        belay::cluster::Claim::Refused => panic!("refused"),
    }
}

/// Waits (at most 5 s) until `observer` sees every one of `users` online (`want`) or offline.
async fn wait_online(observer: &belay::cluster::RedisPresence, users: &[UserId], want: bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !observer
        .online(users)
        .await
        .unwrap()
        .iter()
        .all(|&on| on == want)
    {
        assert!(Instant::now() < until, "not all online = {want} within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session that ends just before another of the same user starts on the same node (a client
/// reconnecting): the release of the first must not land after the claim of the second and
/// hide it, or other nodes would stop routing the user's events to this node.
#[tokio::test]
async fn a_release_just_before_a_new_claim_never_hides_the_new_session() {
    let Some([node, other]) = presences(["n1", "n2"]).await else {
        return;
    };
    let ana = UserId::parse("ana").unwrap();
    for round in 0..20 {
        let first = granted(node.claim(&ana).await);
        drop(first);
        let second = granted(node.claim(&ana).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            other.is_online(&ana).await.unwrap(),
            "round {round}: the new session is hidden by the old one's release"
        );
        drop(second);
        wait_online(&other, std::slice::from_ref(&ana), false).await;
    }
}

/// A node's writes may reach Redis in any order: the newest count stays. A run of the node id
/// that started earlier (its change numbers are older) cannot overwrite the newer one's entry,
/// neither with a claim nor with a release.
#[tokio::test]
async fn an_older_presence_write_never_overwrites_a_newer_one() {
    let Some([older, newer, observer]) = presences(["n1", "n1", "n2"]).await else {
        return;
    };
    let bob = UserId::parse("bob").unwrap();

    let kept = granted(newer.claim(&bob).await);
    let stale = granted(older.claim(&bob).await);
    drop(stale);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        observer.is_online(&bob).await.unwrap(),
        "an older release removed a newer session"
    );
    drop(kept);
    wait_online(&observer, std::slice::from_ref(&bob), false).await;
}

/// The heartbeat's rewrite carries the change number of its snapshot: an older one cannot bring
/// back an entry a newer write took to zero.
#[tokio::test]
async fn an_older_refresh_never_brings_back_a_released_entry() {
    let Some([older, newer, observer]) = presences(["n1", "n1", "n2"]).await else {
        return;
    };
    let cleo = UserId::parse("cleo").unwrap();
    let held = granted(older.claim(&cleo).await);
    let gone = granted(newer.claim(&cleo).await);
    drop(gone);
    wait_online(&observer, std::slice::from_ref(&cleo), false).await;
    older.refresh().await.unwrap();
    assert!(
        !observer.is_online(&cleo).await.unwrap(),
        "an older refresh brought back a released entry"
    );
    drop(held);
}

/// Every session of a node ends at once (its clients leave together): each user's entry goes
/// to zero, written by one writer a bounded number at a time.
#[tokio::test]
async fn when_every_session_of_a_node_ends_at_once_every_entry_goes_to_zero() {
    let Some([node, observer]) = presences(["n1", "n2"]).await else {
        return;
    };
    let users: Vec<UserId> = (0..300)
        .map(|i| UserId::parse(format!("u{i}")).unwrap())
        .collect();
    let mut slots = Vec::new();
    for user in &users {
        slots.push(granted(node.claim(user).await));
        slots.push(granted(node.claim(user).await));
    }
    assert!(observer.online(&users).await.unwrap().iter().all(|&on| on));
    // Half of them, then the rest while the first writes are under way.
    let rest = slots.split_off(slots.len() / 2);
    drop(slots);
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(rest);
    wait_online(&observer, &users, false).await;
}

/// A release that Redis refuses (here: out of memory, writes denied) is written once Redis takes
/// writes again, not left to count on other nodes until the entry expires (30 s here): the
/// heartbeat rewrites only users who still have a session on the node.
#[tokio::test]
async fn a_release_redis_refused_is_written_once_it_takes_writes_again() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let [node, observer] = presences_on(&redis.url(), ["n1", "n2"]).await;
    let dana = UserId::parse("dana").unwrap();
    let slot = granted(node.claim(&dana).await);
    assert!(observer.is_online(&dana).await.unwrap());

    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let set_maxmemory = |bytes: &'static str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .to_owned()
    };
    let _: () = set_maxmemory("1").query_async(&mut admin).await.unwrap();
    drop(slot);
    // Refused while Redis denies writes: the entry still counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        observer.is_online(&dana).await.unwrap(),
        "the release was written although Redis denies writes"
    );
    let _: () = set_maxmemory("0").query_async(&mut admin).await.unwrap();
    wait_online(&observer, std::slice::from_ref(&dana), false).await;
}

/// Messages a node kept while it could not reach Redis all arrive once it is back, however many:
/// here more than a receiving node reads from one publish (4,096), for users whose sessions are on
/// a node that stayed connected, so no catch-up of its own fills what a lost publish would leave
/// out. Only the sending node is cut off (its Redis connections go through a proxy).
#[tokio::test]
async fn every_message_kept_while_cut_off_from_redis_arrives_once_the_node_is_back() {
    let Some(redis) = shared() else { return };
    let Some(db) = fresh_database(Server::Postgres).await else {
        return;
    };
    const USERS: usize = 100;
    const EACH: usize = 42;
    let mut proxy = Proxy::start(([127, 0, 0, 1], port_of(&redis)).into()).await;
    let prefix = unique_prefix();
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let a = Node::start(&db.url, &through, &prefix, &[]).await;
    let b = Node::start(&db.url, &redis, &prefix, &[]).await;
    let mut streams = Vec::new();
    for u in 0..USERS {
        streams.push(b.stream(&format!("u{u}")).await);
    }

    let catch_ups = b.metric("belay_bridge_catch_ups_total").await;
    proxy.cut();
    let until = Instant::now() + Duration::from_secs(10);
    while a.metric("belay_bridge_up").await != 0.0 {
        assert!(Instant::now() < until, "A's bridge is still up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Posted on A while it cannot publish: A keeps them (fewer than it may keep, 10,000).
    for i in 0..EACH {
        let events: Vec<Value> = (0..USERS)
            .map(|u| {
                json!({"user_id": format!("u{u}"), "kind": "post_liked",
                       "data": {"post_id": format!("p{i}"), "by": "zoe"}})
            })
            .collect();
        let r = client()
            .post(format!("{}/v1/notify", a.base))
            .header("X-Api-Key", API_KEY)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(
        a.metric("belay_bridge_up").await,
        0.0,
        "A was cut off throughout"
    );
    proxy.resume().await;

    for stream in &mut streams {
        expect_cursors(stream, EACH as i64, Duration::from_secs(20)).await;
    }
    assert_eq!(
        b.metric("belay_gaps_total").await,
        0.0,
        "no gap was left to fill"
    );
    assert_eq!(
        b.metric("belay_bridge_catch_ups_total").await,
        catch_ups,
        "they arrived live, not by a catch-up"
    );
}

/// A message in Belay's format that a node cannot read may have carried events for its
/// sessions, and nothing shows the gap when they were their users' last: every session of the
/// node catches up from the store.
#[tokio::test]
async fn an_unreadable_message_from_another_node_makes_every_session_catch_up() {
    let Some(redis) = shared() else { return };
    let Some(db) = fresh_database(Server::Postgres).await else {
        return;
    };
    let prefix = unique_prefix();
    let b = Node::start(&db.url, &redis, &prefix, &[]).await;
    let _streams = [b.stream("u0").await, b.stream("u1").await];
    let before = b.metric("belay_bridge_catch_ups_total").await;

    let mut conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A batch announcing more messages than a node reads from one publish, on the broadcast
    // channel as the nodes use it: sharded Pub/Sub from Redis 7, plain before.
    let (channel, junk) = (format!("{{{prefix}:broadcast}}"), "BLY1 n-other M 99999\n");
    let sharded = redis::cmd("SPUBLISH")
        .arg(&channel)
        .arg(junk)
        .query_async::<i64>(&mut conn)
        .await;
    let receivers = match sharded {
        Ok(receivers) => receivers,
        Err(_) => redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(junk)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap(),
    };
    assert_eq!(receivers, 1, "the node listens on the broadcast channel");
    let until = Instant::now() + Duration::from_secs(5);
    while b.metric("belay_bridge_catch_ups_total").await < before + 2.0 {
        assert!(Instant::now() < until, "the sessions did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
