//! Cluster mode on a real `redis-server` and real Chromium: nodes sharing it read each
//! other's sessions, route connections and changes to the node that runs a session,
//! place creates where there is room, end a lost node's sessions, and ride out a Redis
//! that stops answering.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;

async fn cluster_node(redis: &TestRedis, prefix: &str, name: &str) -> TestServer {
    cluster_node_with(redis, prefix, name, |_| {}).await
}

/// A node of the cluster under `prefix` on `redis`, its configuration changed by `tweak`.
async fn cluster_node_with(
    redis: &TestRedis,
    prefix: &str,
    name: &str,
    tweak: impl FnOnce(&mut cdpgate::Config),
) -> TestServer {
    let (url, prefix, name) = (redis.url.clone(), prefix.to_owned(), name.to_owned());
    let profiles = redis.profiles.path().to_string_lossy().into_owned();
    TestServer::start_with(move |c| {
        c.redis_url = url;
        c.profile_store = profiles;
        c.redis_prefix = prefix;
        c.node_id = name;
        c.cluster_secret = CLUSTER_SECRET.into();
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_on_the_redis_reads_every_session() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "shared:", "node-a").await;
    let b = cluster_node(&redis, "shared:", "node-b").await;
    let session = a.create(json!({"metadata": {"job": "crawl"}})).await;
    let id = session["session_id"].as_str().unwrap();

    // Read through the other broker: the same record.
    let seen = b.get(id).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    for field in ["session_id", "status", "expires_at", "created_at", "screen_config"] {
        assert_eq!(seen.json[field], session[field], "{field}");
    }
    assert_eq!(seen.json["metadata"]["job"], "crawl");
    let list = b.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(list.json["total"], 1, "{}", list.body);
    assert_eq!(list.json["sessions"][0]["session_id"], id);
    // Tenants stay apart across nodes too.
    let other = b
        .call(Method::GET, &format!("/public/sessions/{id}"), Some(KEY_B), None)
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);

    // Its end, written by the node that runs it, is what every node reads.
    assert_eq!(a.terminate(id).await.status, StatusCode::NO_CONTENT);
    let ended = b.get(id).await.json;
    assert_eq!(
        (ended["status"].as_str(), ended["end_reason"].as_str()),
        (Some("terminated"), Some("terminated by request"))
    );
    let active = b
        .call(Method::GET, "/public/sessions?status_filter=active", Some(KEY_A), None)
        .await;
    assert_eq!(active.json["total"], 0, "{}", active.body);

    // Another cluster on the same Redis (another prefix) sees none of it.
    let c = cluster_node(&redis, "elsewhere:", "node-c").await;
    assert_eq!(c.get(id).await.status, StatusCode::NOT_FOUND);
    for server in [a, b, c] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_refuses_creates_and_spares_open_sessions() {
    let mut redis = start_redis().await;
    let a = cluster_node(&redis, "stall:", "node-a").await;
    let session = a.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();

    // Redis stops answering (SIGSTOP: the process is there, its answers are not).
    signal(&redis.child, libc::SIGSTOP);
    let r = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        r.json["detail"].as_str().unwrap().contains("cannot be recorded"),
        "{}",
        r.body
    );
    // Lists need Redis; a session running here is still read from its node.
    let r = a.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(a.get(id).await.json["status"], "active");
    // The open session relays as before.
    let v = cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    assert!(v["result"]["product"].as_str().unwrap().contains("Chrome"), "{v}");
    // The refused create left no browser held.
    assert_eq!(a.broker.pool().free_slots(), 3);

    // Redis answers again: the broker reconnects by itself; nothing lost, nothing doubled.
    signal(&redis.child, libc::SIGCONT);
    let created = eventually_async(Duration::from_secs(20), || async {
        a.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}"))
            .await
            .status
            == StatusCode::CREATED
    })
    .await;
    assert!(created, "creates work again once Redis answers");
    // The refused create's write may land late, once Redis reads its socket again: the
    // node removes it, so the list settles on the first session and the new one.
    let settled = eventually_async(Duration::from_secs(20), || async {
        a.call(Method::GET, "/public/sessions", Some(KEY_A), None).await.json["total"] == 2
    })
    .await;
    let list = a.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert!(settled, "the first session and the new one: {}", list.body);
    assert_eq!(a.get(id).await.json["status"], "active");
    let _ = redis.child.kill().await;
    a.stop().await;
}

/// A node as its own process (the `cdpgate` binary), so a test can kill or pause it.
async fn binary_node(redis: &TestRedis, prefix: &str, name: &str, data_dir: &std::path::Path) -> Binary {
    let profiles = redis.profiles.path().to_string_lossy();
    let env = [
        ("CDPGATE_API_KEYS", KEY_A),
        ("CDPGATE_REDIS_URL", redis.url.as_str()),
        ("CDPGATE_REDIS_PREFIX", prefix),
        ("CDPGATE_NODE_ID", name),
        ("CDPGATE_PROFILE_STORE", &profiles),
        ("CDPGATE_CLUSTER_SECRET", CLUSTER_SECRET),
    ];
    start_binary(data_dir, &env).await
}

const ADMIN_KEY: &str = "admin-key-0123456789";

/// docs/cluster.md: a lost node's sessions end "within about 12 s" (a 9 s heartbeat TTL
/// and a 3 s reaper period), plus a little for a busy test machine.
const LOSS_NOTICED_WITHIN: Duration = Duration::from_secs(14);

/// `url` with node `from`'s address replaced by node `to`'s: the same request, another door.
fn through(url: &str, from: &TestServer, to: &TestServer) -> String {
    url.replacen(&from.addr.to_string(), &to.addr.to_string(), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_routes_any_session_to_the_node_that_runs_it() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "route:", "node-a").await;
    let b = cluster_node(&redis, "route:", "node-b").await;
    let c = cluster_node(&redis, "route:", "node-c").await;
    let site = format!("http://{}/", start_site().await);
    let session = a.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let cdp_url = session["cdp_url"].as_str().unwrap();

    // Puppeteer through B and Playwright through C drive the browser that runs on A.
    for (client, door) in [("puppeteer", &b), ("playwright", &c)] {
        let seen = node_script(client, &through(cdp_url, &a, door), &site).await;
        assert_eq!(seen["text"], "Hello through the proxy", "{client}");
    }
    // Discovery through C: Chrome's answer, from A.
    let r = c.discovery(&session, "json/version").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json["Browser"].as_str().unwrap().contains("Chrome"));
    // Raw clients through B and C stay open; a bad token through B is refused by A.
    let mut via_b = ws_connect(&through(cdp_url, &a, &b)).await.unwrap();
    let mut via_c = ws_connect(&through(cdp_url, &a, &c)).await.unwrap();
    cdp_call(&mut via_b, 1, "Browser.getVersion", json!({})).await;
    let forged = through(&format!("{}x", cdp_url), &a, &b);
    assert!(
        ws_connect(&forged).await.is_err(),
        "a forged token is refused through the hop"
    );

    // Changes through other nodes act on A's session.
    let patched = c
        .call(
            Method::PATCH,
            &format!("/public/sessions/{id}"),
            Some(KEY_A),
            Some(r#"{"metadata":{"via":"c"}}"#),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(a.get(id).await.json["metadata"]["via"], "c");
    // A single action through B is carried out by A, in A's browser.
    let action = b
        .run_action(KEY_A, &json!({"session_id": id, "action": format!("go to {site}")}))
        .await;
    assert_eq!(action.json["success"], true, "{}", action.body);
    let read = c
        .run_action(KEY_A, &json!({"session_id": id, "action": "read the page text"}))
        .await;
    assert!(
        read.json["result"]
            .as_str()
            .unwrap_or_default()
            .contains("Hello through the proxy"),
        "{}",
        read.body
    );
    // Another tenant's key is refused by A, as if the session did not exist.
    let r = b
        .call(
            Method::POST,
            &format!("/public/sessions/{id}/terminate"),
            Some(KEY_B),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = b
        .call(
            Method::POST,
            &format!("/public/sessions/{id}/terminate"),
            Some(KEY_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for ws in [&mut via_b, &mut via_c] {
        assert_eq!(
            await_close(ws, Duration::from_secs(10)).await,
            Some((4002, "session terminated".to_owned())),
            "the close code crosses the hop unchanged"
        );
    }
    assert_eq!(c.get(id).await.json["status"], "terminated");

    // A TTL cutoff through a hop: 4001, on time.
    let short = a.create(json!({"ttl": 2})).await;
    let mut via_c = ws_connect(&through(short["cdp_url"].as_str().unwrap(), &a, &c))
        .await
        .unwrap();
    assert_eq!(
        await_close(&mut via_c, Duration::from_secs(15)).await,
        Some((4001, "session expired".to_owned()))
    );
    // DELETE through C forgets it everywhere.
    let short_id = short["session_id"].as_str().unwrap();
    let r = c
        .call(
            Method::DELETE,
            &format!("/public/sessions/{short_id}"),
            Some(KEY_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(b.get(short_id).await.status, StatusCode::NOT_FOUND);
    for server in [a, b, c] {
        server.stop().await;
    }
}

async fn node_script(client: &str, endpoint: &str, site: &str) -> serde_json::Value {
    node("drive.mjs", &[client, endpoint, site]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_places_creates_on_nodes_with_room_and_a_full_cluster_answers_503() {
    let redis = start_redis().await;
    let start = |name: &'static str| {
        cluster_node_with(&redis, "place:", name, |c| {
            c.max_sessions = 1;
            c.admin_key = ADMIN_KEY.into();
        })
    };
    let (a, b, c) = (start("node-a").await, start("node-b").await, start("node-c").await);
    let host = |session: &serde_json::Value| {
        let url = session["cdp_url"].as_str().unwrap().to_owned();
        [&a, &b, &c]
            .into_iter()
            .position(|n| url.contains(&n.addr.to_string()))
            .expect("a node's address")
    };
    let first = a.create(json!({})).await;
    assert_eq!(host(&first), 0, "the receiving node is preferred");
    // A is full: the next creates through A land on B and C, one each; a profile session
    // too (every node reads the shared profile store).
    let profile = a
        .call(
            Method::POST,
            "/public/browser-profiles",
            Some(KEY_A),
            Some(r#"{"name": "p"}"#),
        )
        .await;
    let with_profile = json!({"profile_id": profile.json["id"]}).to_string();
    let mut landed = Vec::new();
    for body in [with_profile.as_str(), "{}"] {
        let r = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        landed.push(host(&r.json));
    }
    landed.sort();
    assert_eq!(landed, vec![1, 2], "one on B, one on C");
    // Every node is full: 503 with Retry-After, after the queue timeout; nothing overfilled.
    let r = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    for n in [&a, &b, &c] {
        assert_eq!(n.broker.pool().free_slots(), 0);
        assert_eq!(n.broker.active_sessions(), 1, "one session per node, no more");
    }
    // Every session is listed from any node.
    let list = c.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(list.json["total"], 3, "{}", list.body);

    // The operator's view, from any node: three live nodes of one slot each.
    let view = |key: Option<&'static str>| {
        let addr = b.addr;
        async move {
            let mut headers = vec![];
            if let Some(k) = key {
                headers.push(("x-admin-key", k));
            }
            http_with(addr, Method::GET, "/admin/cluster", &headers, None).await
        }
    };
    assert_eq!(view(None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        view(Some(KEY_A)).await.status,
        StatusCode::UNAUTHORIZED,
        "an API key is not the admin key"
    );
    let cluster = view(Some(ADMIN_KEY)).await;
    assert_eq!(cluster.status, StatusCode::OK, "{}", cluster.body);
    assert_eq!(cluster.json["node"], "node-b");
    assert_eq!(cluster.json["capacity"], 3);
    let ids: Vec<&str> = cluster.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);
    assert!(
        cluster.json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == true)
    );
    let metrics = a.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_cluster_nodes{state=\"alive\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("cdpgate_cluster_capacity 3"), "{metrics}");
    for server in [a, b, c] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_s_sessions_end_everywhere_and_stay_ended() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "loss:", "node-a").await;
    let b = cluster_node(&redis, "loss:", "node-b").await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut c = binary_node(&redis, "loss:", "node-c", data_dir.path()).await;
    let on_c = http(c.addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(on_c.status, StatusCode::CREATED, "{}", on_c.body);
    let lost_id = on_c.json["session_id"].as_str().unwrap().to_owned();
    let on_a = a.create(json!({})).await;
    let mut client_a = ws_connect(on_a["cdp_url"].as_str().unwrap()).await.unwrap();

    // Its Chrome: the session's browser and the warm one, each a process group.
    let groups = chrome_groups_under(data_dir.path());
    assert!(groups.len() >= 2, "C's session browser and its warm one: {groups:?}");

    // kill -9: the others read its session as ended by the node's loss within what
    // docs/cluster.md says (a heartbeat TTL and a reaper period, 12 s), and a little margin.
    let killed = tokio::time::Instant::now();
    signal(&c.child, libc::SIGKILL);
    c.child.wait().await.unwrap();
    let ended = eventually_async(LOSS_NOTICED_WITHIN, || async {
        b.get(&lost_id).await.json["end_reason"] == "node lost"
    })
    .await;
    assert!(
        ended,
        "not within {:?}: {}",
        killed.elapsed(),
        b.get(&lost_id).await.body
    );
    // No Chrome of C's outlives it.
    let left = || groups.iter().flat_map(|g| processes_in_group(*g)).collect::<Vec<u32>>();
    assert!(
        eventually(Duration::from_secs(10), || left().is_empty()
            && chrome_processes_under(data_dir.path()).is_empty())
        .await,
        "C's Chrome left running: {:?} {:?}",
        left(),
        chrome_processes_under(data_dir.path())
    );
    assert_eq!(a.get(&lost_id).await.json["status"], "terminated");
    // The others keep serving theirs, and creates go to the survivors.
    cdp_call(&mut client_a, 1, "Browser.getVersion", json!({})).await;
    let more = b.create(json!({})).await;
    assert!(more["cdp_url"].as_str().unwrap().contains(&b.addr.to_string()));

    // It comes back: nothing is resurrected.
    let mut c = binary_node(&redis, "loss:", "node-c", data_dir.path()).await;
    let again = http(
        c.addr,
        Method::GET,
        &format!("/public/sessions/{lost_id}"),
        Some(KEY_A),
        None,
    )
    .await;
    assert_eq!(
        (again.json["status"].as_str(), again.json["end_reason"].as_str()),
        (Some("terminated"), Some("node lost"))
    );
    let active = a
        .call(Method::GET, "/public/sessions?status_filter=active", Some(KEY_A), None)
        .await;
    assert_eq!(active.json["total"], 2, "A's and B's: {}", active.body);
    signal(&c.child, libc::SIGTERM);
    c.child.wait().await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taken_for_lost_kills_its_browsers_when_it_wakes() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "wake:", "node-a").await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut c = binary_node(&redis, "wake:", "node-c", data_dir.path()).await;
    let on_c = http(c.addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    let id = on_c.json["session_id"].as_str().unwrap().to_owned();
    let mut client = ws_connect(on_c.json["cdp_url"].as_str().unwrap()).await.unwrap();
    // The session's browser leads a process group of its own.
    let browser = browser_pid(&mut client).await;
    assert!(!processes_in_group(browser).is_empty(), "the session's Chrome runs");
    // Paused past its heartbeat: the cluster takes it for lost, within the documented time.
    let paused = tokio::time::Instant::now();
    signal(&c.child, libc::SIGSTOP);
    let ended = eventually_async(LOSS_NOTICED_WITHIN, || async {
        a.get(&id).await.json["end_reason"] == "node lost"
    })
    .await;
    signal(&c.child, libc::SIGCONT);
    assert!(ended, "not within {:?}: {}", paused.elapsed(), a.get(&id).await.body);
    // Awake again, it ends its session too: the client hears it, the record stays ended,
    // and no process of the session's Chrome is left.
    let closed = await_close(&mut client, Duration::from_secs(15)).await;
    assert_eq!(closed, Some((1001, "node lost".to_owned())));
    assert_eq!(a.get(&id).await.json["end_reason"], "node lost");
    assert!(
        eventually(Duration::from_secs(10), || processes_in_group(browser).is_empty()).await,
        "the lost session's Chrome still runs: {:?}",
        processes_in_group(browser)
    );
    signal(&c.child, libc::SIGTERM);
    c.child.wait().await.unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_per_minute_count_across_the_cluster() {
    let redis = start_redis().await;
    let start = |name: &'static str| cluster_node_with(&redis, "rate:", name, |c| c.creates_per_minute = 2);
    let (a, b) = (start("node-a").await, start("node-b").await);
    a.create(json!({})).await;
    b.create(json!({})).await;
    // Each node alone would allow two more; the cluster allows two in all.
    for node in [&a, &b] {
        let r = node
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}"))
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert!(r.headers.contains_key("retry-after"));
    }
    // Another key has its own allowance.
    let r = a.call(Method::POST, "/public/sessions", Some(KEY_B), Some("{}")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_with_the_documented_config() {
    let redis = start_redis().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let public = public.clone();
        nodes.push(cluster_node_with(&redis, "lb:", name, |c| c.public_url = public).await);
    }
    let prefix = tempfile::tempdir().unwrap();
    let upstreams: String = nodes.iter().map(|n| format!("    server {};\n", n.addr)).collect();
    let config = std::fs::read_to_string(repo_root().join("deploy/nginx-cluster.conf"))
        .unwrap()
        .replace("{{LISTEN}}", &format!("127.0.0.1:{port}"))
        .replace("{{NODES}}", upstreams.trim_end())
        .replace("{{PREFIX}}", prefix.path().to_str().unwrap());
    let conf = prefix.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let nginx = if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut nginx = tokio::process::Command::new(nginx)
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .kill_on_drop(true)
        .spawn()
        .expect("nginx (scripts/setup.sh --test installs it)");
    assert!(
        listening(port, Duration::from_secs(10)).await,
        "nginx listens: {}",
        std::fs::read_to_string(prefix.path().join("error.log")).unwrap_or_default()
    );
    let lb: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let site = format!("http://{}/", start_site().await);

    // Sessions created through nginx land round robin; each is driven through nginx, which
    // sends the WebSocket wherever it likes: the nodes route it to the owner.
    let mut ids = Vec::new();
    for client in ["puppeteer", "playwright", "puppeteer"] {
        let r = http(lb, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let cdp_url = r.json["cdp_url"].as_str().unwrap();
        assert!(
            cdp_url.starts_with(&format!("ws://127.0.0.1:{port}/devtools/browser/")),
            "{cdp_url}"
        );
        let seen = node_script(client, cdp_url, &site).await;
        assert_eq!(seen["text"], "Hello through the proxy", "{client}");
        ids.push(r.json["session_id"].as_str().unwrap().to_owned());
    }
    let spread = nodes.iter().filter(|n| n.broker.active_sessions() > 0).count();
    assert!(spread >= 2, "round robin spread the sessions over the nodes");
    for id in &ids {
        let r = http(
            lb,
            Method::POST,
            &format!("/public/sessions/{id}/terminate"),
            Some(KEY_A),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    let list = http(
        lb,
        Method::GET,
        "/public/sessions?status_filter=active",
        Some(KEY_A),
        None,
    )
    .await;
    assert_eq!(list.json["total"], 0, "{}", list.body);
    // nginx's master takes its workers with it on SIGTERM (a kill would leave them).
    signal(&nginx, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(10), nginx.wait()).await;
    for node in nodes {
        node.stop().await;
    }
}

/// A site whose `/stale` and `/newer` set a persistent `state` cookie; every page reports
/// the cookies it sees.
async fn start_cookie_site() -> std::net::SocketAddr {
    serve_pages(|path| {
        let cookie = match path {
            "/stale" => "set-cookie: state=stale; Path=/; Max-Age=86400\r\n",
            "/newer" => "set-cookie: state=newer; Path=/; Max-Age=86400\r\n",
            _ => "",
        };
        let page = "<html><body><script>window.__state = document.cookie;</script></body></html>";
        (cookie.to_owned(), page.to_owned())
    })
    .await
}

/// Profiles in an S3 store (moto) shared by two nodes: one writer across the cluster, and a
/// node paused past its writer lease wakes up to find its save refused (fencing), the
/// later writer's state intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_paused_past_its_lease_cannot_overwrite_a_later_save() {
    let redis = start_redis().await;
    let s3 = start_s3("profiles").await;
    let site = start_cookie_site().await;
    let store = format!("s3://{}/cluster", s3.bucket);
    let start_node = async |name: &str, dir: &std::path::Path| {
        let mut env: Vec<(&str, String)> = s3.env();
        env.extend([
            ("CDPGATE_API_KEYS", KEY_A.to_owned()),
            ("CDPGATE_REDIS_URL", redis.url.clone()),
            ("CDPGATE_REDIS_PREFIX", "fence:".to_owned()),
            ("CDPGATE_NODE_ID", name.to_owned()),
            ("CDPGATE_PROFILE_STORE", store.clone()),
            ("CDPGATE_PROFILE_LEASE_MS", "3000".to_owned()),
            ("CDPGATE_CLUSTER_SECRET", CLUSTER_SECRET.to_owned()),
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_binary(dir, &env).await
    };
    let (dir_a, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_node("node-a", dir_a.path()).await;
    let c = start_node("node-c", dir_c.path()).await;
    let post = async |addr, path: &str, body: serde_json::Value| {
        http(addr, Method::POST, path, Some(KEY_A), Some(&body.to_string())).await
    };
    let profile = post(a.addr, "/public/browser-profiles", json!({"name": "shared"})).await;
    assert_eq!(profile.status, StatusCode::CREATED, "{}", profile.body);
    let profile_id = profile.json["id"].as_str().unwrap().to_owned();
    let writer = json!({"profile_id": profile_id, "persist_changes": true});

    // Two nodes race for the profile's writer lease: exactly one wins.
    let (on_a, on_c) = tokio::join!(
        post(a.addr, "/public/sessions", writer.clone()),
        post(c.addr, "/public/sessions", writer.clone())
    );
    let mut statuses = [on_a.status, on_c.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::CONFLICT],
        "{} / {}",
        on_a.body,
        on_c.body
    );
    let (winner, node_of_winner) = if on_a.status == StatusCode::CREATED {
        (&on_a, a.addr)
    } else {
        (&on_c, c.addr)
    };
    let winner_id = winner.json["session_id"].as_str().unwrap();
    let path = format!("/public/sessions/{winner_id}/terminate");
    assert_eq!(
        http(node_of_winner, Method::POST, &path, Some(KEY_A), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // C writes "stale" and is paused past its lease.
    let stale = post(c.addr, "/public/sessions", writer.clone()).await;
    assert_eq!(stale.status, StatusCode::CREATED, "{}", stale.body);
    let stale_id = stale.json["session_id"].as_str().unwrap().to_owned();
    let seen = node(
        "page_state.mjs",
        &[stale.json["cdp_url"].as_str().unwrap(), &format!("http://{site}/stale")],
    )
    .await;
    assert_eq!(seen, "state=stale");
    signal(&c.child, libc::SIGSTOP);
    // Once the lease lapses, A may write: it saves "newer".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let newer = loop {
        let r = post(a.addr, "/public/sessions", writer.clone()).await;
        if r.status == StatusCode::CREATED || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if newer.status != StatusCode::CREATED {
        signal(&c.child, libc::SIGCONT);
    }
    assert_eq!(
        newer.status,
        StatusCode::CREATED,
        "the lapsed lease was taken: {}",
        newer.body
    );
    let newer_id = newer.json["session_id"].as_str().unwrap();
    let seen = node(
        "page_state.mjs",
        &[newer.json["cdp_url"].as_str().unwrap(), &format!("http://{site}/newer")],
    )
    .await;
    assert_eq!(
        seen, "state=newer",
        "A started from the last committed state and changed it"
    );
    let path = format!("/public/sessions/{newer_id}/terminate");
    assert_eq!(
        http(a.addr, Method::POST, &path, Some(KEY_A), None).await.status,
        StatusCode::NO_CONTENT
    );
    let saved = http(
        a.addr,
        Method::GET,
        &format!("/public/sessions/{newer_id}"),
        Some(KEY_A),
        None,
    )
    .await;
    assert_eq!(saved.json["profile_saved"], "saved", "{}", saved.body);

    // C wakes up (before the cluster took it for lost: its session still runs); when that
    // session ends, its save of "stale" is refused.
    signal(&c.child, libc::SIGCONT);
    let path = format!("/public/sessions/{stale_id}/terminate");
    assert_eq!(
        http(a.addr, Method::POST, &path, Some(KEY_A), None).await.status,
        StatusCode::NO_CONTENT
    );
    let stale_record = http(
        a.addr,
        Method::GET,
        &format!("/public/sessions/{stale_id}"),
        Some(KEY_A),
        None,
    )
    .await;
    assert_eq!(
        stale_record.json["profile_saved"],
        "not saved: the writer lease was lost and a later session saved the profile",
        "{}",
        stale_record.body
    );
    let metrics = http(c.addr, Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_profile_saves_superseded_total 1"),
        "{metrics}"
    );
    let reader = post(
        a.addr,
        "/public/sessions",
        json!({"profile_id": profile_id, "persist_changes": false}),
    )
    .await;
    assert_eq!(reader.status, StatusCode::CREATED, "{}", reader.body);
    let seen = node(
        "page_state.mjs",
        &[
            reader.json["cdp_url"].as_str().unwrap(),
            &format!("http://{site}/check"),
        ],
    )
    .await;
    assert_eq!(seen, "state=newer", "the later save survives");
    // The other node sees the reader on A: the profile is in use, not deletable.
    let profile_path = format!("/public/browser-profiles/{profile_id}");
    let shown = http(c.addr, Method::GET, &profile_path, Some(KEY_A), None).await;
    assert_eq!(shown.json["in_use_by"], 1, "{}", shown.body);
    let deleted = http(c.addr, Method::DELETE, &profile_path, Some(KEY_A), None).await;
    assert_eq!(deleted.status, StatusCode::CONFLICT, "{}", deleted.body);

    for mut n in [a, c] {
        signal(&n.child, libc::SIGTERM);
        n.child.wait().await.unwrap();
    }
}

/// One MCP client's conversation with one node: `initialize`, then tool calls.
struct McpClient {
    /// The node it talks to: any, for its MCP session.
    addr: std::net::SocketAddr,
    key: &'static str,
    session: String,
}

impl McpClient {
    async fn open(node: &TestServer, key: &'static str) -> McpClient {
        let hello = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "cluster-test", "version": "1"}}});
        let r = http_with(
            node.addr,
            Method::POST,
            "/mcp",
            &[("x-api-key", key), ("accept", "application/json, text/event-stream")],
            Some(&hello.to_string()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let session = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
        McpClient {
            addr: node.addr,
            key,
            session,
        }
    }

    /// A JSON-RPC message of this MCP session, as sent to its node.
    async fn send(&self, method: &str, params: serde_json::Value) -> Response {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let headers = [
            ("x-api-key", self.key),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", self.session.as_str()),
        ];
        http_with(self.addr, Method::POST, "/mcp", &headers, Some(&call.to_string())).await
    }

    /// The HTTP status of a call of `method` without parameters.
    async fn status_of(&self, method: &str) -> StatusCode {
        self.send(method, json!({})).await.status
    }

    /// A tool's result: `(is_error, its text)`.
    async fn tool(&self, name: &str, arguments: serde_json::Value) -> (bool, String) {
        let r = self
            .send("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let result = &r.json["result"];
        assert!(result.is_object(), "{name}: {}", r.body);
        let text = result["content"][0]["text"].as_str().unwrap_or_default().to_owned();
        (result["isError"] == true, text)
    }
}

fn mcp_site(path: &str) -> (String, String) {
    let page = if path.starts_with("/done") {
        "<html><head><title>Done</title></head><body><h1>Signed up</h1></body></html>"
    } else {
        "<html><head><title>Form</title></head><body><h1>Join</h1>\
         <form action='/done' method='get'><input name='who' aria-label='Who'>\
         <button type='submit'>Join now</button></form></body></html>"
    };
    (String::new(), page.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_on_any_node_drives_a_session_another_node_runs() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "mcp:", "node-a").await;
    let b = cluster_node(&redis, "mcp:", "node-b").await;
    let site = serve_pages(mcp_site).await;
    // The session runs on node B; the agent talks to node A only.
    let session = b.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    assert_eq!(b.broker.active_sessions(), 1);
    let agent = McpClient::open(&a, KEY_A).await;

    let (failed, said) = agent
        .tool("navigate", json!({"session_id": id, "url": format!("http://{site}/")}))
        .await;
    assert!(!failed, "{said}");
    assert!(said.contains("Title: Form"), "{said}");
    let (_, snap) = agent.tool("snapshot", json!({"session_id": id})).await;
    let reference = |pattern: &str| {
        let line = snap
            .lines()
            .find(|l| l.contains(pattern))
            .unwrap_or_else(|| panic!("{pattern}: {snap}"));
        let at = line.find("[ref=").unwrap() + 5;
        line[at..at + line[at..].find(']').unwrap()].to_owned()
    };
    let (who, join) = (reference("textbox \"Who\""), reference("button \"Join now\""));
    // The same MCP session through node B (a load balancer without sticky sessions).
    let mut agent = agent;
    agent.addr = b.addr;
    let (failed, said) = agent
        .tool("type", json!({"session_id": id, "ref": who, "text": "ada"}))
        .await;
    assert!(!failed, "{said}");
    let (failed, said) = agent.tool("click", json!({"session_id": id, "ref": join})).await;
    assert!(!failed, "{said}");
    let (_, md) = agent.tool("markdown", json!({"session_id": id})).await;
    assert!(md.contains("Signed up"), "node B's page, read through node A: {md}");

    agent.addr = a.addr;
    // Another key cannot use the agent's MCP session on either node, nor a forged one.
    for node in [&a, &b] {
        let borrowed = McpClient {
            addr: node.addr,
            key: KEY_B,
            session: agent.session.clone(),
        };
        assert_eq!(borrowed.status_of("tools/list").await, StatusCode::NOT_FOUND);
        let mut forged = agent.session.clone();
        let last = if forged.ends_with('0') { "1" } else { "0" };
        forged.replace_range(forged.len() - 1.., last);
        let forged = McpClient {
            addr: node.addr,
            key: KEY_A,
            session: forged,
        };
        assert_eq!(forged.status_of("tools/list").await, StatusCode::NOT_FOUND);
    }
    // Another key, on either node, reaches none of it.
    let stranger = McpClient::open(&a, KEY_B).await;
    for (name, args) in [
        ("snapshot", json!({"session_id": id})),
        ("end_session", json!({"session_id": id})),
    ] {
        let (failed, said) = stranger.tool(name, args).await;
        assert!(failed, "{name}: {said}");
        assert!(!said.contains("Signed up"), "{said}");
    }
    assert_eq!(b.broker.active_sessions(), 1, "key B ended key A's session");

    // Ended through node A, on node B.
    let (failed, said) = agent.tool("end_session", json!({"session_id": id})).await;
    assert!(!failed, "{said}");
    assert_eq!(b.broker.active_sessions(), 0);
    assert_eq!(a.get(id).await.json["status"], "terminated");
    a.stop().await;
    b.stop().await;
}

/// `GET /public/pools/{name}` on `node` (as key A) once `done` holds for it (within a minute).
async fn pool_once(node: &TestServer, name: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let path = format!("/public/pools/{name}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = node.call(Method::GET, &path, Some(KEY_A), None).await;
        if r.status == StatusCode::OK && done(&r.json) {
            return r.json;
        }
        assert!(tokio::time::Instant::now() < deadline, "pool {name}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pool defined through one node is every node's: its ready sessions spread over the
/// nodes, its counts the cluster's, a create on a node with none ready goes to one that
/// has one, and a node that leaves takes its share with it while the others fill the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_is_the_clusters_spread_over_its_nodes_and_refilled_when_one_leaves() {
    let redis = start_redis().await;
    let quiet = |c: &mut cdpgate::Config| c.pool_size = 0;
    let a = cluster_node_with(&redis, "pools:", "node-a", quiet).await;
    let b = cluster_node_with(&redis, "pools:", "node-b", quiet).await;
    for body in [
        json!({"name": "spread", "size": 2, "locale": "fr-FR"}),
        json!({"name": "gone", "size": 0}),
    ] {
        let r = a
            .call(Method::POST, "/public/pools", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    // The name is the cluster's.
    let again = b
        .call(
            Method::POST,
            "/public/pools",
            Some(KEY_A),
            Some(&json!({"name": "spread", "size": 1}).to_string()),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);

    // Known on B, one ready on each node, the counts the cluster's on either.
    let both = json!([{"node": "node-a", "ready": 1}, {"node": "node-b", "ready": 1}]);
    for node in [&a, &b] {
        let pool = pool_once(node, "spread", |p| p["stats"]["nodes"] == both).await;
        assert_eq!(
            (pool["size"].clone(), pool["locale"].clone()),
            (json!(2), json!("fr-FR"))
        );
        assert_eq!(pool["stats"]["ready"], 2, "{pool}");
    }
    // Another key sees nothing of it on any node.
    for node in [&a, &b] {
        let listed = node.call(Method::GET, "/public/pools", Some(KEY_B), None).await;
        assert_eq!(listed.json, json!({"pools": []}));
        let take = json!({"pool": "spread"}).to_string();
        let r = node
            .call(Method::POST, "/public/sessions", Some(KEY_B), Some(&take))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    }

    // Deleted through B: gone from A too.
    let deleted = b.call(Method::DELETE, "/public/pools/gone", Some(KEY_A), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(
        eventually_async(Duration::from_secs(30), || async {
            a.call(Method::GET, "/public/pools/gone", Some(KEY_A), None)
                .await
                .status
                == StatusCode::NOT_FOUND
        })
        .await,
        "the pool deleted through B is gone from A"
    );

    // Smaller through B: one node keeps the one ready session, the other none.
    let patched = b
        .call(
            Method::PATCH,
            "/public/pools/spread",
            Some(KEY_A),
            Some(&json!({"size": 1}).to_string()),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let one = |p: &serde_json::Value| {
        p["size"] == 1
            && p["stats"]["ready"] == 1
            && p["stats"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["ready"] == 1)
                .count()
                == 1
    };
    let pool = pool_once(&a, "spread", one).await;
    pool_once(&b, "spread", one).await;
    let on_a = pool["stats"]["nodes"][0]["ready"] == 1;
    let (holder, empty) = if on_a { (a, b) } else { (b, a) };

    // A create on the node with none ready is served by the node that has one.
    let take = json!({"pool": "spread", "metadata": {"via": "the other node"}}).to_string();
    let r = empty
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&take))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (r.json["pool_hit"].clone(), r.json["locale"].clone()),
        (json!(true), json!("fr-FR"))
    );
    let id = r.json["session_id"].as_str().unwrap().to_owned();
    assert!(holder.broker.running_session(None, &id).is_some(), "the holder runs it");
    assert!(empty.broker.running_session(None, &id).is_none());
    let mut client = ws_connect(r.json["cdp_url"].as_str().unwrap()).await.unwrap();
    assert!(cdp_call(&mut client, 1, "Browser.getVersion", json!({})).await["result"].is_object());
    drop(client);

    // The holder leaves: its ready session goes with it, and the other node fills the gap.
    let holder_id = if on_a { "node-a" } else { "node-b" };
    holder.stop().await;
    let left = empty.call(Method::GET, "/public/pools/spread", Some(KEY_A), None).await;
    assert!(
        !left.body.contains(holder_id),
        "the node that left counts for nothing: {}",
        left.body
    );
    let pool = pool_once(&empty, "spread", |p| p["stats"]["ready"] == 1).await;
    assert_eq!(pool["stats"]["nodes"].as_array().unwrap().len(), 1, "{pool}");
    let local = empty
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&take))
        .await;
    assert_eq!(local.status, StatusCode::CREATED, "{}", local.body);
    assert_eq!(local.json["pool_hit"], true, "{}", local.body);
    let local_id = local.json["session_id"].as_str().unwrap();
    assert!(empty.broker.running_session(None, local_id).is_some());
    empty.stop().await;
}

/// A pool's ready sessions on every node count against its key's quota on each: with a
/// quota of 4 and a pool of 4 spread over two nodes, no plain create fits on either, the
/// four takes do (two of them sent to the other node), and the key never runs more than 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_ready_sessions_on_other_nodes_count_against_the_keys_quota() {
    let redis = start_redis().await;
    let quota = |c: &mut cdpgate::Config| {
        c.pool_size = 0;
        c.max_sessions_per_key = 4;
    };
    let a = cluster_node_with(&redis, "quota:", "node-a", quota).await;
    let b = cluster_node_with(&redis, "quota:", "node-b", quota).await;
    let body = json!({"name": "four", "size": 4}).to_string();
    let r = a.call(Method::POST, "/public/pools", Some(KEY_A), Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let spread = json!([{"node": "node-a", "ready": 2}, {"node": "node-b", "ready": 2}]);
    for node in [&a, &b] {
        pool_once(node, "four", |p| p["stats"]["nodes"] == spread).await;
    }

    // Four ready sessions of the key: a plain create fits on neither node.
    for node in [&a, &b] {
        let r = node
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}"))
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert!(r.body.contains("max_sessions_per_key"), "{}", r.body);
    }
    // The four takes, all through A.
    let take = json!({"pool": "four"}).to_string();
    for i in 0..4 {
        let r = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some(&take)).await;
        assert_eq!(r.status, StatusCode::CREATED, "take {i}: {}", r.body);
    }
    let running = a.broker.active_sessions() + b.broker.active_sessions();
    assert_eq!(running, 4);
    // Nothing more fits, plain or pooled, and no refill runs past the quota.
    let r = b.call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pool = pool_once(&a, "four", |_| true).await;
    assert_eq!(pool["stats"]["ready"], 0, "{pool}");
    assert_eq!(a.broker.active_sessions() + b.broker.active_sessions(), 4);
    a.stop().await;
    b.stop().await;
}

/// A profile deleted through one node takes the pool browsers copied from it on every node:
/// none is handed out afterwards, on the node that deleted it or on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_deleted_through_one_node_is_handed_out_by_no_pool() {
    let redis = start_redis().await;
    let quiet = |c: &mut cdpgate::Config| c.pool_size = 0;
    let a = cluster_node_with(&redis, "gone:", "node-a", quiet).await;
    let b = cluster_node_with(&redis, "gone:", "node-b", quiet).await;
    let body = json!({"name": "kept"}).to_string();
    let profile = a
        .call(Method::POST, "/public/browser-profiles", Some(KEY_A), Some(&body))
        .await;
    assert_eq!(profile.status, StatusCode::CREATED, "{}", profile.body);
    let id = profile.json["id"].as_str().unwrap().to_owned();
    let pool = json!({"name": "copies", "size": 2, "profile_id": id}).to_string();
    let r = a.call(Method::POST, "/public/pools", Some(KEY_A), Some(&pool)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let spread = json!([{"node": "node-a", "ready": 1}, {"node": "node-b", "ready": 1}]);
    pool_once(&a, "copies", |p| p["stats"]["nodes"] == spread).await;

    let deleted = b
        .call(
            Method::DELETE,
            &format!("/public/browser-profiles/{id}"),
            Some(KEY_A),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    for node in [&a, &b] {
        pool_once(node, "copies", |p| p["stats"]["ready"] == 0).await;
        let take = json!({"pool": "copies"}).to_string();
        let r = node
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&take))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        assert_eq!(r.json["detail"], "Browser profile not found");
    }
    assert_eq!(a.broker.active_sessions() + b.broker.active_sessions(), 0);
    a.stop().await;
    b.stop().await;
}
