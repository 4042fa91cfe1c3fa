//! `tokex purge`: from the configuration (`admin.address`, `admin.token_file`)
//! or from flags; what it prints and its exit codes.

use std::process::Command;

use common::process::BIN;

use super::*;

fn purge_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("purge").args(args).env_remove("TOKEX_CONFIG").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn tokex_purge_reads_the_admin_address_and_token_from_the_configuration() {
    let auth_server = RecordingAs::start().await;
    let backend = echo_backend().await;
    let token_file = admin_token_file();
    // The file the CLI reads is the one the gateway runs (a probed free port).
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:{}\", token_file: \"{}\" }}\n{}",
        free_port(),
        token_file.display(),
        config(&auth_server, backend, "", "")
    );
    let path = token_file.with_file_name("tokex.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let gw = TestGateway::start(&yaml).await;
    let (alice, bob) = (subject("alice"), subject("bob"));
    call(&gw, "/orders/1", &alice).await;
    call(&gw, "/billing/1", &alice).await;
    call(&gw, "/orders/1", &bob).await;
    let config = path.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || purge_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap()
    };

    let (code, out, err) = run(vec!["-c".into(), config.clone(), "--sub".into(), "alice".into()]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "purged 2 cached token(s); introspection answers: 0; shared store keys: -");
    call(&gw, "/orders/1", &alice).await;
    assert_eq!(exchanges(&auth_server), 4);

    // Flags instead of the configuration.
    let hash = sha256_hex(&bob);
    let flags = vec!["--admin".into(), gw.admin.clone(), "--token-file".into(), token_file.display().to_string()];
    let (code, out, _) = run([flags.clone(), vec!["--token-sha256".into(), hash]].concat()).await;
    assert_eq!((code, out.trim()), (0, "purged 1 cached token(s); introspection answers: 0; shared store keys: -"));
    let (code, out, _) = run([flags.clone(), vec!["--all".into()]].concat()).await;
    assert_eq!((code, out.trim().starts_with("purged 1 ")), (0, true), "{out}");

    // Refused: a wrong token, an unknown route; unusable flags.
    let wrong = token_file.with_file_name("wrong-token");
    std::fs::write(&wrong, "nope").unwrap();
    let (code, _, err) = run(vec![
        "--admin".into(),
        gw.admin.clone(),
        "--token-file".into(),
        wrong.display().to_string(),
        "--all".into(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run([flags.clone(), vec!["--route".into(), "nope".into()]].concat()).await;
    assert_eq!(code, 1);
    assert!(err.contains("no route named"), "{err}");
    let (code, _, _) = run([flags.clone(), vec!["--sub".into(), "a".into(), "--all".into()]].concat()).await;
    assert_eq!(code, 64, "two selectors");
    let (code, _, _) = run(flags.clone()).await;
    assert_eq!(code, 64, "no selector");
    let (code, _, _) = run([flags.clone(), vec!["--token-sha256".into(), "zz".into()]].concat()).await;
    assert_eq!(code, 64, "not a SHA-256");
    let (code, _, err) = run(vec!["--sub".into(), "a".into()]).await;
    assert_eq!(code, 64, "{err}");
    // An unreachable gateway.
    let (code, _, _) = run(vec![
        "--admin".into(),
        format!("http://127.0.0.1:{}", free_port()),
        "--token-file".into(),
        token_file.display().to_string(),
        "--all".into(),
    ])
    .await;
    assert_eq!(code, 1);
}
