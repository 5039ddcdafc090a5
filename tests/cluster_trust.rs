//! The nodes of a cluster trust each other only through the cluster secret, never through
//! Redis: a node record written into Redis by anyone else is never sent a create or a hop,
//! a request marked as sent on by another node is refused unless its hop header is signed
//! with the cluster secret and fresh, the client's API key never leaves the node it
//! reached, and Redis holds no copy of the token secret.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cdpgate::auth::{ApiKeys, ClusterKey, Tenant};
use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const OTHER_SECRET: &str = "not-this-cluster-secret-of-32-characters";

async fn cluster_node(redis: &TestRedis, prefix: &str, name: &str) -> TestServer {
    let (url, prefix, name) = (redis.url.clone(), prefix.to_owned(), name.to_owned());
    let profiles = redis.profiles.path().to_string_lossy().into_owned();
    TestServer::start_with(move |c| {
        c.redis_url = url;
        c.profile_store = profiles;
        c.redis_prefix = prefix;
        c.node_id = name;
        c.cluster_secret = CLUSTER_SECRET.into();
        c.max_sessions = 1;
    })
    .await
}

/// A stand-in HTTP server posing as a node: it answers every request 418 and keeps each
/// request's head (lowercased).
async fn fake_node() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, _)) = read_request(&mut stream, &mut buf).await {
                    seen.lock().unwrap().push(head);
                    let answer = "HTTP/1.1 418 I'm a teapot\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, heads)
}

async fn redis_connection(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Registers a node record in Redis directly, as anyone who can write to it could, with
/// `sig` as its signature, and keeps it alive.
async fn register(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    id: &str,
    url: &str,
    free: usize,
    sig: &str,
) {
    let record = json!({
        "id": id, "url": url, "max_sessions": 50, "free": free, "sessions": 0,
        "heartbeat_ms": 1, "sig": sig,
    });
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{prefix}nodes"))
        .arg(id)
        .arg(record.to_string())
        .cmd("SET")
        .arg(format!("{prefix}node:{id}:alive"))
        .arg(1)
        .query_async(conn)
        .await
        .unwrap();
}

fn node_signature(secret: &str, id: &str, url: &str, free: usize) -> String {
    let free = free.to_string();
    ClusterKey::new(secret).sign_node(&[id, url, "50", &free, "0", "1"])
}

/// Says in Redis that session `id` runs on node `node`.
async fn move_record(conn: &mut redis::aio::MultiplexedConnection, prefix: &str, id: &str, node: &str) {
    let key = format!("{prefix}session:{id}");
    let json: String = redis::cmd("GET").arg(&key).query_async(conn).await.unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&json).unwrap();
    record["node"] = json!(node);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(record.to_string())
        .query_async(conn)
        .await
        .unwrap();
}

/// A change to session `id` through the node at `addr`, with the client's key in both
/// places a client may put it.
async fn patch_metadata(addr: std::net::SocketAddr, id: &str) -> Response {
    let bearer = format!("Bearer {KEY_A}");
    http_with(
        addr,
        Method::PATCH,
        &format!("/public/sessions/{id}"),
        &[("x-api-key", KEY_A), ("authorization", &bearer)],
        Some(r#"{"metadata":{"via":"b"}}"#),
    )
    .await
}

fn tenant_of(key: &str) -> Tenant {
    ApiKeys::new(&[key.to_owned()]).tenants().next().unwrap().clone()
}

/// Every key in Redis and its value, whatever its type, as text.
async fn everything_in(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, String)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(conn).await.unwrap();
        let value: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query_async(conn).await.unwrap()],
            "hash" => redis::cmd("HGETALL").arg(&key).query_async(conn).await.unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(&key).query_async(conn).await.unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .unwrap(),
            other => panic!("a key of type {other}: {key}"),
        };
        out.push((key, value.join("\n")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_registered_by_writing_to_redis_get_nothing_and_redis_keeps_no_secret() {
    let redis = start_redis().await;
    let prefix = "trust:";
    let a = cluster_node(&redis, prefix, "node-a").await;
    let b = cluster_node(&redis, prefix, "node-b").await;
    let mut conn = redis_connection(&redis).await;
    // Posing as nodes with plenty of room (placement would try them first): one unsigned,
    // one signed with another secret. A third, signed with the cluster secret but full,
    // stands in for a real node that logs what it is sent.
    let (unsigned_url, unsigned) = fake_node().await;
    let (other_url, other) = fake_node().await;
    let (logging_url, logging) = fake_node().await;
    register(&mut conn, prefix, "node-f", &unsigned_url, 40, "").await;
    let sig = node_signature(OTHER_SECRET, "node-g", &other_url, 40);
    register(&mut conn, prefix, "node-g", &other_url, 40, &sig).await;
    let sig = node_signature(CLUSTER_SECRET, "node-h", &logging_url, 0);
    register(&mut conn, prefix, "node-h", &logging_url, 0, &sig).await;

    // A is full after one session: the next create overflows to B, a real node, and the
    // one after finds the cluster full.
    let first = a.create(json!({})).await;
    assert!(first["cdp_url"].as_str().unwrap().contains(&a.addr.to_string()));
    let second = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert!(
        second.json["cdp_url"].as_str().unwrap().contains(&b.addr.to_string()),
        "placed on B: {}",
        second.body
    );
    let third = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE, "{}", third.body);

    // A session whose record says it runs on a forged node: a request about it through B
    // is not sent there.
    let id = first["session_id"].as_str().unwrap();
    for forged in ["node-f", "node-g"] {
        move_record(&mut conn, prefix, id, forged).await;
        let r = patch_metadata(b.addr, id).await;
        assert_ne!(r.status, StatusCode::IM_A_TEAPOT, "{forged}: {}", r.body);
    }
    assert!(
        unsigned.lock().unwrap().is_empty(),
        "the unsigned node was sent nothing"
    );
    assert!(
        other.lock().unwrap().is_empty(),
        "the node signed with another secret was sent nothing"
    );
    assert!(logging.lock().unwrap().is_empty(), "the full node got no create");
    assert!(a.broker.forged_node_records().unwrap() > 0);

    // The same request about a session on a node that proved the cluster secret goes there,
    // without the client's key, with B's signed hop header naming the tenant.
    move_record(&mut conn, prefix, id, "node-h").await;
    let r = patch_metadata(b.addr, id).await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT, "{}", r.body);
    let heads = logging.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    assert!(!head.contains(KEY_A), "the client's key stays on B: {head}");
    assert!(!head.contains("x-api-key") && !head.contains("authorization"), "{head}");
    let hop = head
        .lines()
        .find_map(|l| l.strip_prefix("x-cdpgate-hop:"))
        .expect("a hop header")
        .trim();
    let checked =
        ClusterKey::new(CLUSTER_SECRET).verify_hop(hop, "PATCH", &format!("/public/sessions/{id}"), SystemTime::now());
    assert_eq!(checked.and_then(|h| h.tenant), Some(tenant_of(KEY_A)));
    move_record(&mut conn, prefix, id, "node-a").await;

    // A CDP connection through A to B's session crosses the hop (B checks its token); no
    // key's value in Redis holds the token secret or the cluster secret, no key is named for it.
    let cdp_via_a = second.json["cdp_url"]
        .as_str()
        .unwrap()
        .replacen(&b.addr.to_string(), &a.addr.to_string(), 1);
    let mut ws = ws_connect(&cdp_via_a).await.expect("B's token through A");
    let v = cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    assert!(v["result"]["product"].as_str().unwrap().contains("Chrome"), "{v}");
    let token_secret = ClusterKey::new(CLUSTER_SECRET).token_secret();
    let everything = everything_in(&mut conn).await;
    assert!(everything.len() > 5, "{everything:?}");
    for (key, value) in &everything {
        assert!(!key.contains("token_secret"), "{key}");
        for secret in [token_secret.as_str(), CLUSTER_SECRET] {
            assert!(!value.contains(secret), "{key} holds a secret");
        }
    }
    drop(ws);
    for server in [a, b] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_late_hops_are_refused_and_change_nothing() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "hops:", "node-a").await;
    let b = cluster_node(&redis, "hops:", "node-b").await;
    let session = a.create(json!({"metadata": {"job": "crawl"}})).await;
    let id = session["session_id"].as_str().unwrap();
    let path = format!("/public/sessions/{id}");
    let terminate = format!("{path}/terminate");
    let tenant = tenant_of(KEY_A);
    let ours = ClusterKey::new(CLUSTER_SECRET);
    let theirs = ClusterKey::new(OTHER_SECRET);
    let now = SystemTime::now();
    let late = now - Duration::from_secs(60);
    let early = now + Duration::from_secs(60);
    let sign = |key: &ClusterKey, method: &str, target: &str, at| key.sign_hop(method, target, Some(&tenant), at);
    let forged: Vec<(&str, Method, &str, String)> = vec![
        ("a bare mark", Method::POST, &terminate, "1".to_owned()),
        (
            "another secret",
            Method::POST,
            &terminate,
            sign(&theirs, "POST", &terminate, now),
        ),
        ("late", Method::POST, &terminate, sign(&ours, "POST", &terminate, late)),
        (
            "from the future",
            Method::POST,
            &terminate,
            sign(&ours, "POST", &terminate, early),
        ),
        (
            "for another path",
            Method::POST,
            &terminate,
            sign(&ours, "POST", &path, now),
        ),
        (
            "for another method",
            Method::DELETE,
            &path,
            sign(&ours, "PATCH", &path, now),
        ),
        (
            "a create",
            Method::POST,
            "/public/sessions",
            sign(&theirs, "POST", "/public/sessions", now),
        ),
        ("a change", Method::PATCH, &path, sign(&theirs, "PATCH", &path, now)),
    ];
    let count = |server: &TestServer| server.broker.active_sessions();
    for (what, method, target, header) in &forged {
        for key in [None, Some(KEY_A)] {
            let mut headers = vec![("x-cdpgate-hop", header.as_str())];
            if let Some(k) = key {
                headers.push(("x-api-key", k));
            }
            let body = (*method != Method::DELETE).then_some(r#"{"metadata":{"forged":true}}"#);
            let r = http_with(a.addr, method.clone(), target, &headers, body).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} (key {key:?}): {}", r.body);
        }
    }
    // Nothing changed: the session runs, its record is as it was, no session was added.
    assert_eq!(count(&a), 1);
    let record = a.get(id).await.json;
    assert_eq!(record["status"], "active");
    assert_eq!(record["metadata"]["job"], "crawl");
    assert!(record["metadata"].get("forged").is_none(), "{record}");
    let list = b.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(list.json["total"], 1, "{}", list.body);

    // A fresh header signed with the cluster secret is a node's credential: no key needed,
    // and the tenant it names is the one that acts (another tenant's finds nothing).
    let valid = ours.sign_hop("PATCH", &path, Some(&tenant), SystemTime::now());
    let r = http_with(
        a.addr,
        Method::PATCH,
        &path,
        &[("x-cdpgate-hop", &valid)],
        Some(r#"{"metadata":{"via":"hop"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let other_tenant = ours.sign_hop("PATCH", &path, Some(&tenant_of(KEY_B)), SystemTime::now());
    let r = http_with(
        a.addr,
        Method::PATCH,
        &path,
        &[("x-cdpgate-hop", &other_tenant)],
        Some(r#"{"metadata":{"via":"b"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let anonymous = ours.sign_hop("PATCH", &path, None, SystemTime::now());
    let r = http_with(
        a.addr,
        Method::PATCH,
        &path,
        &[("x-cdpgate-hop", &anonymous)],
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(a.get(id).await.json["metadata"]["via"], "hop");

    // A real hop still works: B sends the terminate on to A.
    let r = b.call(Method::POST, &terminate, Some(KEY_A), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(a.get(id).await.json["status"], "terminated");
    assert_eq!(count(&a), 0);
    for server in [a, b] {
        server.stop().await;
    }
}

/// A Redis that asks for a password: the nodes give it from `redis_url`
/// (`redis://:password@host:port/`) and serve one cluster; without it Redis answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_a_redis_with_a_password() {
    let password = "redis-password-0123456789";
    let redis = start_redis_with_password(Some(password)).await;
    let without = redis.url.replacen(&format!(":{password}@"), "", 1);
    let mut anonymous = redis::Client::open(without.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let refused: redis::RedisResult<Vec<String>> = redis::cmd("KEYS").arg("*").query_async(&mut anonymous).await;
    assert!(refused.is_err(), "Redis asks for its password");
    let a = cluster_node(&redis, "auth:", "node-a").await;
    let b = cluster_node(&redis, "auth:", "node-b").await;
    // A is full after one session: the second create goes to B through the cluster's Redis.
    let first = a.create(json!({})).await;
    let second = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert!(second.json["cdp_url"].as_str().unwrap().contains(&b.addr.to_string()));
    let seen = b.get(first["session_id"].as_str().unwrap()).await;
    assert_eq!(seen.json["status"], "active", "{}", seen.body);
    for server in [a, b] {
        server.stop().await;
    }
}
