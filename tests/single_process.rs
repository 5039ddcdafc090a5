//! Process sessions' headless shells as one process (`single_process_shell`): the session's
//! browser is one process with no renderer, GPU or network process beside it, a whole job
//! works through its `cdp_url` (pages, a cross-site frame, a worker, a second tab, a
//! screenshot), context sessions' shared browsers keep their processes, a client's request
//! for a second browser context (raw CDP, Puppeteer, Playwright) gets an error answer and
//! the session goes on, and what ends a one-process browser (a tab's crash, a tab in a
//! second browser context asked for past that guard) ends the session and leaves no
//! process. What such a session's pages can read of the
//! broker's disk is `confinement::a_single_process_session_reads_none_of_the_brokers_files`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn single_process_server() -> TestServer {
    TestServer::start_with(|c| c.single_process_shell = true).await
}

/// The page: a cross-site frame (localhost against 127.0.0.1) that posts its title up, and
/// a worker that answers.
fn site(path: &str) -> (String, String) {
    let page = match path {
        "/frame" => "<title>framed</title><script>parent.postMessage(document.title, '*')</script>".into(),
        _ => "<title>the job</title><p>single-process-marker</p><script>
            window.got = new Promise(r => addEventListener('message', e => r(e.data)));
            const f = document.createElement('iframe');
            f.src = `http://localhost:${location.port}/frame`;
            document.body.append(f);
            </script>"
            .into(),
    };
    (String::new(), page)
}

/// The command lines of the processes of the browser led by `browser` (the launcher makes
/// each browser the leader of a process group of its own). Read after a page has loaded in
/// it: a browser of many processes has started its renderer, network and GPU ones by then.
fn processes_of(browser: u32) -> Vec<String> {
    processes_in_group(browser)
        .into_iter()
        .map(|p| command_line(p).join(" "))
        .collect()
}

fn helpers(processes: &[String]) -> Vec<&String> {
    processes
        .iter()
        .filter(|p| {
            ["--type=renderer", "--type=gpu-process", "--type=utility"]
                .iter()
                .any(|t| p.contains(t))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_process_shell_is_one_process_and_runs_a_whole_job() {
    let server = single_process_server().await;
    let site = serve_pages(site).await;
    let session = server.create(json!({})).await;
    assert_eq!(session["browser"], "shell", "{session}");

    let mut cdp = CdpClient::connect(&session).await;
    let (_, page) = cdp.own_page().await;
    cdp.load(&page, &format!("http://{site}/")).await;
    assert_eq!(cdp.eval(&page, "document.title").await, "the job");
    assert_eq!(
        cdp.eval(&page, "window.got").await,
        "framed",
        "the cross-site frame ran"
    );
    let worked = cdp
        .eval(
            &page,
            "new Promise(r => { const w = new Worker(URL.createObjectURL(new Blob(['postMessage(6 * 7)']))); \
             w.onmessage = e => r(e.data); })",
        )
        .await;
    assert_eq!(worked, 42, "a worker ran");
    let shot = cdp.call(Some(&page), "Page.captureScreenshot", json!({})).await;
    let png = shot["data"].as_str().unwrap();
    assert!(
        png.starts_with("iVBORw0KGgo") && png.len() > 1_000,
        "a PNG: {} bytes of base64",
        png.len()
    );
    let second = cdp.open(&format!("http://{site}/"), None).await.unwrap();
    assert!(cdp.settled_text(&second).await.contains("single-process-marker"));

    // All of that ran in one process: no renderer, GPU or network process beside it (as
    // root, not even a zygote: Chrome starts one only for its sandbox).
    let browser = browser_pid(&mut cdp.ws).await;
    let processes = processes_of(browser);
    assert!(helpers(&processes).is_empty(), "helper processes: {processes:#?}");
    if cdpgate::browser::running_as_root() {
        assert_eq!(processes.len(), 1, "{processes:#?}");
    }

    // A context session's shared browser runs too (with a page loaded).
    let context = server.create(json!({"isolation": "context"})).await;
    let mut shared = CdpClient::connect(&context).await;
    let (_, shared_page) = shared.own_page().await;
    shared.load(&shared_page, &format!("http://{site}/")).await;
    // Their start-up calibration holds beside one-process shells: the user agent shows no
    // automation tell.
    let agent = shared.eval(&shared_page, "navigator.userAgent").await;
    assert!(!agent.as_str().unwrap().contains("Headless"), "{agent}");
    // Every browser on the node: the process sessions' shells (this one, the warm pool's)
    // are one process each, and the shared browser, which is not made one, shows its
    // helpers to the same probe.
    let (mut one_process, mut many) = (0, 0);
    for group in chrome_groups_under(server.data_dir.path()) {
        let processes = processes_of(group);
        if command_line(group).iter().any(|flag| flag == "--single-process") {
            one_process += 1;
            assert!(
                helpers(&processes).is_empty(),
                "a one-process shell's processes: {processes:#?}"
            );
        } else {
            many += 1;
            assert!(
                !helpers(&processes).is_empty(),
                "a shared browser's processes: {processes:#?}"
            );
        }
    }
    assert!(
        one_process >= 1 && many >= 1,
        "{one_process} one-process shells, {many} shared browsers"
    );
    // Every browser may crash at a tenant's word (here, with a one-process shell, by any
    // tab's crash): none leaves a core dump.
    for group in chrome_groups_under(server.data_dir.path()) {
        let limits = std::fs::read_to_string(format!("/proc/{group}/limits")).unwrap();
        let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
        assert_eq!(
            core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
            ["1", "1"],
            "{core}"
        );
    }
    server.stop().await;
}

/// What ends a one-process browser with the tab that asks it: a crash, or a tab in a
/// second browser context (Chrome's one-process mode serves one context).
#[derive(Debug, Clone, Copy)]
enum Ending {
    Crash,
    SecondContext,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_or_a_second_context_ends_a_single_process_session_and_leaves_no_process() {
    let server = single_process_server().await;
    let site = serve_pages(site).await;
    for ending in [Ending::Crash, Ending::SecondContext] {
        let session = server.create(json!({})).await;
        let id = session["session_id"].as_str().unwrap().to_owned();
        let mut cdp = CdpClient::connect(&session).await;
        let browser = browser_pid(&mut cdp.ws).await;
        let profile = command_line(browser)
            .iter()
            .find_map(|f| f.strip_prefix("--user-data-dir=").map(std::path::PathBuf::from))
            .expect("the browser's own directory");
        assert!(profile.starts_with(server.data_dir.path()) && profile.is_dir());
        let (_, page) = cdp.own_page().await;
        cdp.load(&page, &format!("http://{site}/")).await;
        // Neither is answered: the browser is gone first.
        let message = match ending {
            Ending::Crash => json!({"id": 9_000, "method": "Page.crash", "params": {}, "sessionId": page}),
            Ending::SecondContext => {
                // Written with an escape, the method passes the relay's guard (a courtesy to
                // clients, no boundary): a page in the second context ends the browser.
                let id = cdp.next_id();
                let escaped = format!(r#"{{"id":{id},"method":"Target.createBrowserContex\u0074","params":{{}}}}"#);
                let created = cdp.send_raw(id, &escaped).await;
                let context = created["result"]["browserContextId"].as_str().unwrap().to_owned();
                json!({"id": 9_000, "method": "Target.createTarget",
                       "params": {"url": "about:blank", "browserContextId": context}})
            }
        };
        cdp.ws.send(Message::text(message.to_string())).await.unwrap();

        let ended = eventually_async(Duration::from_secs(20), || async {
            server.get(&id).await.json["end_reason"] == "browser exited"
        })
        .await;
        assert!(ended, "{ending:?}: the session ended: {}", server.get(&id).await.body);
        let gone = eventually(Duration::from_secs(10), || processes_in_group(browser).is_empty()).await;
        assert!(gone, "{ending:?}: the browser left {:?}", processes_in_group(browser));
        let removed = eventually(Duration::from_secs(10), || !profile.exists()).await;
        assert!(
            removed,
            "{ending:?}: the browser's directory {} is left",
            profile.display()
        );

        // The pool goes on: the next session runs a page.
        let next = server.create(json!({})).await;
        let mut cdp = CdpClient::connect(&next).await;
        let (_, page) = cdp.own_page().await;
        cdp.load(&page, &format!("http://{site}/")).await;
        assert_eq!(cdp.eval(&page, "document.title").await, "the job", "{ending:?}");
        drop(cdp);
        server.terminate(next["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_browser_context_is_refused_and_the_session_goes_on() {
    let server = single_process_server().await;
    let site = serve_pages(site).await;
    let url = format!("http://{site}/");
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap().to_owned();
    let endpoint = session["cdp_url"].as_str().unwrap().to_owned();
    let mut cdp = CdpClient::connect(&session).await;
    let browser = browser_pid(&mut cdp.ws).await;

    // Over raw CDP: an error answer to the command's own id, and no context made.
    let reply = cdp
        .send(None, "Target.createBrowserContext", json!({"disposeOnDetach": true}))
        .await;
    let message = reply["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("refused: {reply}"));
    assert!(message.contains("Target.oneContextPerSession"), "{reply}");
    let contexts = cdp.call(None, "Target.getBrowserContexts", json!({})).await;
    assert_eq!(contexts["browserContextIds"], json!([]), "no second context");
    // The name anywhere else in a command reaches the page as it was sent.
    let (_, page) = cdp.own_page().await;
    cdp.load(&page, &url).await;
    let said = cdp
        .eval(
            &page,
            r#"JSON.stringify({method: "Target.createBrowserContext", "method ": 1})"#,
        )
        .await;
    assert_eq!(said, r#"{"method":"Target.createBrowserContext","method ":1}"#);
    let global = cdp
        .call(Some(&page), "Runtime.evaluate", json!({"expression": "globalThis"}))
        .await;
    let nested = json!({"method": "Target.createBrowserContext"});
    let echoed = cdp
        .call(
            Some(&page),
            "Runtime.callFunctionOn",
            json!({"functionDeclaration": "function (x) { return x; }",
                   "objectId": global["result"]["objectId"],
                   "arguments": [{"value": nested}], "returnByValue": true}),
        )
        .await;
    assert_eq!(
        echoed["result"]["value"], nested,
        "a nested \"method\" passes unchanged"
    );

    // Puppeteer's createBrowserContext and Playwright's newContext each get the error, and
    // the same browser goes on serving the default context.
    for client in ["puppeteer", "playwright"] {
        let result = node("second_context.mjs", &[&endpoint, client, &url]).await;
        assert_eq!(result["created"], false, "{client}: {result}");
        assert!(
            result["error"]
                .as_str()
                .unwrap_or("")
                .contains("Target.oneContextPerSession"),
            "{client}: {result}"
        );
        assert_eq!(result["title"], "the job", "{client}: {result}");
        assert_eq!(result["contexts"], 1, "{client}: {result}");
    }
    assert_eq!(browser_pid(&mut cdp.ws).await, browser, "the same browser");
    assert!(!processes_in_group(browser).is_empty());
    let record = server.get(&id).await;
    assert_eq!(record.json["status"], "active", "{}", record.body);
    drop(cdp);
    server.terminate(&id).await;
    server.stop().await;
}
