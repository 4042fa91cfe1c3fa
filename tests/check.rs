//! `tokex check` as a newcomer and a CI pipeline use it: offline checks of a
//! pod's config, errors that carry their YAML line, one error per mistake.

mod common;

use std::path::Path;

use common::process::*;

/// Runs `tokex <args>` with a clean environment for the variables the
/// configs below use; returns the exit code and stdout + stderr.
fn tokex(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("TOKEX_STRICT")
        .env_remove("TOKEX_CONFIG")
        .env_remove("TOKEX_LOG_FORMAT")
        .env_remove("AS_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn check_file(yaml: &str, extra: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let dir = temp_dir("check-cfg");
    let file = dir.join("c.yaml");
    std::fs::write(&file, yaml).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-c", &path]);
    let out = tokex(&args, envs);
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// A pod's config: a Secret file, a projected actor token and an AS URL
/// from the environment, none of which exist on the CI machine.
const POD_CONFIG: &str = r#"listen: { address: "0.0.0.0:8080" }
admin: { address: "0.0.0.0:9901" }
authorization_servers:
  corp:
    token_endpoint: ${AS_URL}
    client_auth:
      method: client_secret_basic
      client_id: tokex
      client_secret_file: /var/run/secrets/tokex-test-absent/client-secret
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: http://127.0.0.1:8081
    auth: exchange
    exchange:
      authorization_server: corp
      audience: [orders-api]
      actor:
        token_file: /var/run/secrets/tokens-test-absent/tokex
        token_type: urn:ietf:params:oauth:token-type:jwt
"#;

#[test]
fn offline_check_reads_no_files_and_needs_no_variables() {
    let (code, out) = check_file(POD_CONFIG, &[], &[]);
    assert_eq!(code, 1, "without --offline the variable and the files are required:\n{out}");
    assert!(out.contains("AS_URL is not set"), "{out}");

    let (code, out) = check_file(POD_CONFIG, &["--offline"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: ") && out.contains("AS_URL is not set"), "the unset variable is named:\n{out}");
    assert!(out.contains("offline"), "{out}");

    // With the variable set, nothing is left unchecked but the files.
    let (code, out) = check_file(POD_CONFIG, &["--offline"], &[("AS_URL", "https://as.example.com/token")]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("is not set"), "{out}");

    // Offline still checks structure, references and values it can see.
    let broken = POD_CONFIG.replace("authorization_server: corp", "authorization_server: corp2");
    let (code, out) = check_file(&broken, &["--offline"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown authorization server \"corp2\""), "{out}");
    // A malformed `${` is an error offline too.
    let (code, out) = check_file(&POD_CONFIG.replace("${AS_URL}", "${AS_URL"), &["--offline"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unterminated"), "{out}");
    // A set variable with a bad value is reported.
    let (code, out) = check_file(POD_CONFIG, &["--offline"], &[("AS_URL", "as.example.com")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("authorization_servers.corp.token_endpoint"), "{out}");
}

#[test]
fn check_without_a_config_exits_1_with_a_clear_message() {
    let (code, out) = tokex(&["check"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no configuration file: pass -c FILE or set TOKEX_CONFIG"), "{out}");
    let (code, out) = tokex(&["check", "--offline"], &[]);
    assert_eq!(code, 1, "{out}");
    // `run` keeps its unusable-config code.
    let (code, _) = tokex(&["run"], &[]);
    assert_eq!(code, 64);
    // TOKEX_CONFIG is read.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let (code, out) =
        tokex(&["check", "--offline"], &[("TOKEX_CONFIG", example.to_str().unwrap()), ("TOKEX_CLIENT_SECRET", "x")]);
    assert_eq!(code, 0, "{out}");
}
