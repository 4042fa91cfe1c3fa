//! The `tokex` binary as operators run it: `check`, logs, signals, reload.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};

fn check(path: &Path, envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["check", "-c"]).arg(path).env_remove("TOKEX_STRICT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn example_config_passes_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let (code, out) = check(&example, &[("TOKEX_CLIENT_SECRET", "from-env")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (3 routes"), "{out}");
}

#[test]
fn dev_example_config_passes_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dev/config.yaml");
    let (code, out) = check(&example, &[("TOKEX_CLIENT_SECRET", "from-env")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 routes"), "{out}");
}

#[test]
fn check_prints_every_error_with_path_and_exits_1() {
    let dir = temp_dir("check");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        r#"listen: { address: "0.0.0.0:8080" }
authorization_servers:
  corp: { token_endpoint: "not a url" }
routes:
  - name: a
    match: { path_prefix: / }
    upstream: http://127.0.0.1:1
    exchange: { authorization_server: nowhere }
  - name: a
    upstream: http://127.0.0.1:1
  - name: b
    match: { path: /x }
    auth: none
    upstream: http://127.0.0.1:1
"#,
    )
    .unwrap();
    let (code, out) = check(&file, &[]);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "authorization_servers.corp.token_endpoint (line 3)",
        "routes[0].exchange.authorization_server (line 8): unknown authorization server \"nowhere\"",
        "routes[1].name (line 9): duplicate route name \"a\"",
        "routes[1] (line 9): auth: exchange needs an exchange: section",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }

    // Shadowed routes are warnings: check still passes.
    std::fs::write(
        &file,
        "listen: { address: \"0.0.0.0:8080\" }\nroutes:\n  - name: all\n    auth: none\n    upstream: http://127.0.0.1:1\n  - name: never\n    match: { path: /x }\n    auth: none\n    upstream: http://127.0.0.1:1\n",
    )
    .unwrap();
    let (code, out) = check(&file, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: routes[1].match (line 7)") && out.contains("can never match"), "{out}");

    // Syntax errors carry a line.
    std::fs::write(&file, "listen: { address: \"0.0.0.0:8080\" }\nroutes:\n  - name: a\n    upstreem: http://x\n")
        .unwrap();
    let (code, out) = check(&file, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("routes[0].upstreem (line 4): unknown field `upstreem`"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn strict_mode_refuses_clear_text_secrets() {
    let dir = temp_dir("strict");
    let file = dir.join("c.yaml");
    let yaml = |secret: &str| {
        format!(
            "listen: {{ address: \"0.0.0.0:8080\" }}\nauthorization_servers:\n  corp:\n    token_endpoint: https://as.example.com/token\n    client_auth: {{ method: client_secret_post, client_id: x, client_secret: \"{secret}\" }}\nroutes:\n  - name: a\n    upstream: http://127.0.0.1:1\n    exchange: {{ authorization_server: corp }}\n"
        )
    };
    std::fs::write(&file, yaml("in-the-clear")).unwrap();
    assert_eq!(check(&file, &[]).0, 0);
    let (code, out) = check(&file, &[("TOKEX_STRICT", "1")]);
    assert_eq!(code, 1);
    assert!(out.contains("client_secret is written in clear"), "{out}");
    assert!(!out.contains("in-the-clear"), "the secret itself must not be printed: {out}");
    std::fs::write(&file, yaml("${MY_SECRET}")).unwrap();
    assert_eq!(check(&file, &[("TOKEX_STRICT", "1"), ("MY_SECRET", "v")]).0, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gateway process whose JSON log lines are collected.
#[tokio::test]
async fn logs_never_carry_tokens_or_secrets() {
    let auth_server = RecordingAs::start().await;
    auth_server.set(|r, n| match r.param("subject_token") {
        Some(s) if s.contains("REVOKED") => {
            Reply::Json(400, json!({"error": "invalid_grant", "error_description": "bad token SUBJECT-REVOKED-SECRET"}))
        }
        _ => Reply::Json(
            200,
            json!({"access_token": format!("ISSUED-SECRET-{n}"), "token_type": "Bearer", "expires_in": 60}),
        ),
    });
    let backend = echo_backend().await;
    let dir = temp_dir("logs");
    let actor = dir.join("actor");
    std::fs::write(&actor, "ACTOR-SECRET-TOKEN").unwrap();
    let auth = "{ method: client_secret_basic, client_id: tokex, client_secret: CLIENT-SECRET-VALUE }";
    let extra = format!("      actor: {{ token_file: {} }}\n", actor.display());
    let file =
        write_config(&dir, &config_with(&auth_server.token_url(), auth, &exchange_route("a", "/", backend, &extra)));
    let gw = Proc::start(&file, "debug").await;

    let subject = fake_jwt(json!({"sub": "alice", "exp": now() + 600, "nonce": "SUBJECT-SECRET"}));
    let (status, _, body) = get(&format!("{}/orders?q=1", gw.addr), Some(&subject)).await;
    assert_eq!(status, 200, "{body}");
    get(&format!("{}/orders", gw.addr), Some(&subject)).await;
    assert_eq!(get(&format!("{}/x", gw.addr), Some("SUBJECT-REVOKED-SECRET")).await.0, 401);
    assert_eq!(get(&format!("{}/x", gw.addr), None).await.0, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let log = gw.log();
    for secret in ["SUBJECT-SECRET", "ISSUED-SECRET", "ACTOR-SECRET", "CLIENT-SECRET", "REVOKED-SECRET", &subject[..40]]
    {
        assert!(!log.contains(secret), "{secret} leaked into the log:\n{log}");
    }
    // One access line per request, with a fingerprint; an audit event per exchange.
    let access: Vec<Value> = gw
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "tokex::access")
        .collect();
    assert_eq!(access.len(), 4, "{log}");
    assert_eq!(access[0]["route"], "a");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["cache"], "miss");
    assert_eq!(access[1]["cache"], "hit");
    assert_eq!(access[0]["token"].as_str().unwrap().len(), 8);
    assert_eq!(access[0]["token"], access[1]["token"]);
    assert_eq!(access[0]["path"], "/orders", "the query string is not logged");
    assert!(log.contains("\"target\":\"tokex::audit\"") && log.contains("\"sub\":\"alice\""), "{log}");
}

/// The review's case: an ~11 KB `sub` was written in full to the audit log.
/// Caller-derived text in log lines is capped (and escaped).
#[tokio::test]
async fn caller_derived_log_fields_are_capped() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let dir = temp_dir("caps");
    let file =
        write_config(&dir, &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, "")));
    let gw = Proc::start(&file, "info").await;
    let sub = format!("alice\n{}", "s".repeat(11_000));
    let subject = fake_jwt(json!({"sub": sub, "exp": now() + 600}));
    let path = format!("/{}", "p".repeat(4000));
    assert_eq!(get(&format!("{}{path}", gw.addr), Some(&subject)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events: Vec<Value> =
        gw.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    let audit = events.iter().find(|v| v["target"] == "tokex::audit").expect("an audit event");
    let logged = audit["sub"].as_str().unwrap();
    assert!(logged.len() < 300, "{} bytes of sub logged", logged.len());
    assert!(logged.starts_with("alice\nsss") && logged.ends_with("bytes)"), "{logged}");
    // The newline stayed inside its field: no line of the log starts with the rest.
    assert!(gw.lines.lock().unwrap().iter().all(|l| !l.starts_with("sss")));
    let access = events.iter().find(|v| v["target"] == "tokex::access").expect("an access line");
    let logged = access["path"].as_str().unwrap();
    assert!(logged.len() < 1100 && logged.ends_with("…(+2977 bytes)"), "{} bytes of path logged", logged.len());

    // Found by review: the caller's token as the method (or in the path) was
    // written to the access line. Such a request is refused, and logged redacted.
    let token = "0123456789abcdef0123456789abcdef-SECRET";
    let addr = gw.addr.trim_start_matches("http://").parse().unwrap();
    // Found by the second review: requests refused by an earlier check (an
    // access_token name, a dot segment, two Authorization lines) too.
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (line, extra) in [
        (format!("{token} /x HTTP/1.1"), String::new()),
        (format!("GET /x/{token} HTTP/1.1"), String::new()),
        (format!("GET /x/{token}?access_token=1 HTTP/1.1"), String::new()),
        (format!("GET /x/{token}/../y HTTP/1.1"), String::new()),
        (format!("GET /y/{token} HTTP/1.1"), "Authorization: Bearer other-token-value\r\n".to_owned()),
    ] {
        let req = format!("{line}\r\nHost: x\r\n{auth}{extra}Connection: close\r\n\r\n");
        assert_eq!(common::wire::raw(addr, &req).await.unwrap().status, 400, "{line}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!gw.log().contains("SECRET"), "the token reached the log:\n{}", gw.log());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let slow = serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("slow done"))
    })
    .await;
    let dir = temp_dir("drain");
    let file = write_config(
        &dir,
        &format!(
            "runtime: {{ workers: 1, shutdown_grace: 5s, shutdown_delay: 300ms }}\nroutes:\n  - name: slow\n    auth: none\n    upstream: http://{slow}\n"
        ),
    );
    let mut gw = Proc::start(&file, "info").await;
    let url = gw.addr.clone();
    let in_flight = tokio::spawn(async move { get(&url, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readyz = format!("{}/readyz", gw.admin);
    assert_eq!(get(&readyz, None).await.0, 200);
    gw.signal("TERM");
    // During the shutdown delay: not ready, but new requests are still served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&readyz, None).await.0, 503);
    let (status, _, _) = get(&gw.addr, None).await;
    assert_eq!(status, 200, "new requests are accepted during the shutdown delay");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow done"));
    let started = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(5), gw.child.wait()).await.expect("exits").unwrap();
    assert_eq!(exit.code(), Some(0), "{}", gw.log());
    assert!(started.elapsed() < Duration::from_secs(3));
    // Nothing listens any more.
    assert!(client().get(&gw.addr).send().await.is_err());
}

/// `runtime.workers: 2`: connections are served by two worker threads of
/// their own (thread per core); requests on both work, and a shutdown still
/// drains a request in flight on a worker.
#[tokio::test]
async fn two_workers_serve_connections_and_drain_on_shutdown() {
    let slow = serve(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Response::new(full("done"))
    })
    .await;
    let dir = temp_dir("workers");
    let file = write_config(
        &dir,
        &format!(
            "runtime: {{ workers: 2, shutdown_grace: 5s, shutdown_delay: 0s }}\nroutes:\n  - name: s\n    auth: none\n    upstream: http://{slow}\n"
        ),
    );
    let mut gw = Proc::start(&file, "info").await;
    let pid = gw.child.id().unwrap();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    for w in ["tokex-worker-0", "tokex-worker-1"] {
        assert!(names.iter().any(|n| n == w), "{w} in {names:?}");
    }
    // Connections in turn on each worker: all answered, over keep-alive too.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = gw.addr.clone();
            tokio::spawn(async move {
                let c = client();
                for _ in 0..20 {
                    assert_eq!(c.get(format!("{url}/fast")).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let url = gw.addr.clone();
    let in_flight = tokio::spawn(async move { get(&format!("{url}/slow"), None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "done"), "the request in flight on a worker finishes");
    let exit = tokio::time::timeout(Duration::from_secs(5), gw.child.wait()).await.expect("exits").unwrap();
    assert_eq!(exit.code(), Some(0), "{}", gw.log());
}

/// Log lines are written in batches by a thread of their own: none is lost
/// or reordered, the last ones are written at exit, and every line is whole.
#[tokio::test]
async fn batched_log_lines_keep_their_order_and_are_all_written_by_exit() {
    let backend = echo_backend().await;
    let dir = temp_dir("log-batches");
    let file = write_config(
        &dir,
        &format!("runtime: {{ workers: 2, shutdown_delay: 0s }}\nroutes:\n  - name: e\n    auth: none\n    upstream: http://{backend}\n"),
    );
    let mut gw = Proc::start(&file, "info").await;
    let c = client();
    // One client in turn (so the order is known), then eight at once.
    for i in 0..300 {
        let resp = c.get(format!("{}/seq", gw.addr)).header("x-request-id", format!("seq-{i}")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let burst: Vec<_> = (0..8)
        .map(|t| {
            let (c, url) = (c.clone(), gw.addr.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    let id = format!("par-{t}-{i}");
                    assert_eq!(
                        c.get(format!("{url}/par")).header("x-request-id", id).send().await.unwrap().status(),
                        200
                    );
                }
            })
        })
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    // Stopped at once: what is still buffered is written on the way out.
    gw.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(5), gw.child.wait()).await.expect("exits").unwrap();
    assert_eq!(exit.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = gw.lines.lock().unwrap().clone();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a whole JSON line: {l}")))
        .collect();
    let ids: Vec<&str> =
        events.iter().filter(|v| v["target"] == "tokex::access").filter_map(|v| v["request_id"].as_str()).collect();
    let seq: Vec<String> = (0..300).map(|i| format!("seq-{i}")).collect();
    assert_eq!(ids.len(), 1100, "every access line is written");
    assert_eq!(ids[..300], seq.iter().map(String::as_str).collect::<Vec<_>>()[..], "in order");
    for t in 0..8 {
        let mine: Vec<&str> = ids.iter().copied().filter(|id| id.starts_with(&format!("par-{t}-"))).collect();
        let want: Vec<String> = (0..100).map(|i| format!("par-{t}-{i}")).collect();
        assert_eq!(mine, want.iter().map(String::as_str).collect::<Vec<_>>(), "one client's lines in its order");
    }
    assert_eq!(events.last().map(|v| v["message"].clone()), Some(json!("stopped")), "the last line is the last event");
}

#[tokio::test]
async fn sighup_reloads_routes_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let backend = echo_backend().await;
    let dir = temp_dir("reload");
    let route = |path: &str| {
        format!("routes:\n  - name: r\n    match: {{ path: {path} }}\n    auth: none\n    upstream: http://{backend}\n")
    };
    let file = write_config(&dir, &route("/one"));
    let gw = Proc::start(&file, "info").await;
    assert_eq!(get(&format!("{}/one", gw.addr), None).await.0, 200);
    assert_eq!(get(&format!("{}/two", gw.addr), None).await.0, 404);

    write_config(&dir, &route("/two"));
    gw.signal("HUP");
    let two = format!("{}/two", gw.addr);
    let mut ok = false;
    for _ in 0..50 {
        if get(&two, None).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "reload did not take effect:\n{}", gw.log());
    assert_eq!(get(&format!("{}/one", gw.addr), None).await.0, 404);

    // A broken file is rejected; /two keeps working.
    std::fs::write(&file, "listen: { address: \"127.0.0.1:0\" }\nroutes: [ { name: broken } ]\n").unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&two, None).await.0, 200);
    assert!(gw.log().contains("new configuration rejected"), "{}", gw.log());
    let metrics = get(&format!("{}/metrics", gw.admin), None).await.2;
    assert!(metrics.contains("tokex_config_reloads_total{result=\"rejected\"}"), "{metrics}");
}

/// The review's case: an edit followed by a SIGHUP made two reloads (the
/// signal, then the file watcher). One edit is one reload; a later SIGHUP
/// alone still reloads (it is how a rotated client certificate is re-read).
#[tokio::test]
async fn an_edit_and_its_sighup_make_one_reload() {
    let backend = echo_backend().await;
    let dir = temp_dir("debounce");
    let route = |path: &str| {
        format!("routes:\n  - name: r\n    match: {{ path: {path} }}\n    auth: none\n    upstream: http://{backend}\n")
    };
    let file = write_config(&dir, &route("/one"));
    let gw = Proc::start(&file, "info").await;
    let reloads = || async {
        let text = get(&format!("{}/metrics", gw.admin), None).await.2;
        text.lines()
            .find(|l| l.starts_with("tokex_config_reloads_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    write_config(&dir, &route("/two"));
    gw.signal("HUP");
    // Two poll intervals and the debounce: time for a second reload to show.
    tokio::time::sleep(Duration::from_millis(4800)).await;
    assert_eq!(get(&format!("{}/two", gw.addr), None).await.0, 200);
    assert_eq!(reloads().await, 1, "{}", gw.log());

    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(reloads().await, 2, "a SIGHUP of its own reloads: {}", gw.log());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_with_a_bad_config_exits_64() {
    let dir = temp_dir("bad-run");
    let file = dir.join("c.yaml");
    std::fs::write(&file, "listen: { address: nope }\nroutes: []\n").unwrap();
    let out = std::process::Command::new(BIN).args(["run", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen.address"));
}
