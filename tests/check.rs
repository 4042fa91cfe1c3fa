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

/// Each problem once, at its line, saying what is expected.
#[test]
fn errors_name_their_line_and_one_mistake_is_one_error() {
    let yaml = r#"listen: { address: "0.0.0.0:8080" }
admin:
  address: "0.0.0.0:8080"
authorization_servers:
  corp:
    token_endpoint: "not a url"
  other: { token_endpoint: "https://as.example.com/token" }
routes:
  - name: a
    match:
      path_prefix: /
      methods: [get, "GE T"]
    upstream: 127.0.0.1:8081
    exchange:
      authorization_server: corp
  - name: b
    upstream: http://127.0.0.1:1
    exchange: { authorization_server: nowhere }
"#;
    let (code, out) = check_file(yaml, &[], &[]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    for line in &errors {
        assert!(line.contains(" (line "), "every error carries its line: {line}");
    }
    for want in [
        "admin.address (line 3): 0.0.0.0:8080 takes the port of listen.address",
        "authorization_servers.corp.token_endpoint (line 6): invalid URL \"not a url\"",
        "routes[0].match.methods[1] (line 12): invalid method \"GE T\": expected an HTTP method",
        "routes[0].upstream (line 13): invalid URL \"127.0.0.1:8081\"",
        "expected http://host:port",
        "routes[1].exchange.authorization_server (line 18): unknown authorization server \"nowhere\" (defined: corp, other)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // The bad token endpoint is one error: the route that names `corp` is
    // not also told the server is unknown.
    assert!(!out.contains("unknown authorization server \"corp\""), "{out}");
    assert_eq!(errors.len(), 5, "{out}");

    // Methods are upper-cased; a free port pair is fine.
    let ok = "listen: { address: \"127.0.0.1:8080\" }\nadmin: { address: \"127.0.0.1:9901\" }\nroutes:\n  - { name: r, auth: none, upstream: \"http://127.0.0.1:1\", match: { methods: [get, Post] } }\n";
    let (code, out) = check_file(ok, &[], &[]);
    assert_eq!(code, 0, "{out}");
    // Same port on another address of the host still collides with 0.0.0.0.
    let clash = ok.replace("127.0.0.1:9901", "127.0.0.2:8080").replace("127.0.0.1:8080", "0.0.0.0:8080");
    let (code, out) = check_file(&clash, &[], &[]);
    assert_eq!(code, 1, "{out}");
    // No servers at all: the error says so.
    let none = "listen: { address: \"127.0.0.1:8080\" }\nroutes:\n  - { name: r, upstream: \"http://127.0.0.1:1\", exchange: { authorization_server: corp } }\n";
    let (_, out) = check_file(none, &[], &[]);
    assert!(
        out.contains("unknown authorization server \"corp\" (none is defined under authorization_servers)"),
        "{out}"
    );
    // Warnings carry their line too.
    let shadow = "listen: { address: \"127.0.0.1:8080\" }\nroutes:\n  - { name: all, auth: none, upstream: \"http://127.0.0.1:1\" }\n  - name: never\n    match: { path: /x }\n    auth: none\n    upstream: http://127.0.0.1:1\n";
    let (code, out) = check_file(shadow, &[], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: routes[1].match (line 5)"), "{out}");
}

/// A reload applies routes and servers; a changed listener, worker count
/// or cache size is named in a warning, since it needs a restart.
#[tokio::test]
async fn a_reload_that_changes_a_restart_only_setting_says_so() {
    let dir = temp_dir("restart-only");
    let route = "routes:\n  - { name: r, auth: none, upstream: \"http://127.0.0.1:1\" }\n";
    let file = write_config(&dir, route);
    let gw = Proc::start(&file, "info").await;
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("name: r,", "name: r2,") + "cache: { max_entries: 10 }\nruntime: { workers: 3 }\n",
    )
    .unwrap();
    gw.signal("HUP");
    let mut log = String::new();
    for _ in 0..50 {
        log = gw.log();
        if log.contains("need a restart") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(log.contains("configuration reloaded"), "{log}");
    let warning = log.lines().find(|l| l.contains("need a restart")).unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("runtime.workers") && warning.contains("cache.max_entries"), "{warning}");
    assert!(!warning.contains("listen.address"), "{warning}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One edit of config.example.yaml: uncomment the block that starts at the
/// line holding the anchor, or delete the active line (and its children)
/// holding it.
enum Edit {
    Uncomment(&'static str),
    Delete(&'static str),
}

/// Column of the first non-space character and the rest of the line.
fn indent(line: &str) -> (usize, &str) {
    let rest = line.trim_start_matches(' ');
    (line.len() - rest.len(), rest)
}

/// For a commented line `<col>#<sp><content>`: the `#` column and the
/// content's own indentation.
fn commented(line: &str) -> Option<(usize, usize)> {
    let (col, rest) = indent(line);
    let body = rest.strip_prefix('#')?;
    let body = body.strip_prefix(' ').unwrap_or(body);
    Some((col, indent(body).0))
}

fn the_line(lines: &[String], anchor: &str) -> usize {
    let found: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(anchor)).collect();
    assert_eq!(found.len(), 1, "anchor {anchor:?} must be on exactly one line");
    found[0]
}

/// Applies the edits; returns the text and the original line numbers uncommented.
fn apply(text: &str, edits: &[Edit]) -> (String, Vec<usize>) {
    // Each line keeps its original number, for coverage.
    let mut lines: Vec<(usize, String)> = text.lines().map(str::to_owned).enumerate().collect();
    let mut uncommented = Vec::new();
    for edit in edits {
        let plain: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
        match edit {
            Edit::Uncomment(anchor) => {
                let start = the_line(&plain, anchor);
                let (col, depth) = commented(&plain[start]).unwrap_or_else(|| panic!("{anchor:?} is not commented"));
                let mut end = start + 1;
                while end < plain.len() && commented(&plain[end]).is_some_and(|(c, d)| c == col && d > depth) {
                    end += 1;
                }
                for (number, line) in &mut lines[start..end] {
                    let cut = if line[col..].starts_with("# ") { 2 } else { 1 };
                    line.replace_range(col..col + cut, "");
                    uncommented.push(*number);
                }
            }
            Edit::Delete(anchor) => {
                let start = the_line(&plain, anchor);
                let (depth, _) = indent(&plain[start]);
                let mut end = start + 1;
                while end < plain.len() && (plain[end].trim().is_empty() || indent(&plain[end]).0 > depth) {
                    end += 1;
                }
                lines.drain(start..end);
            }
        }
    }
    (lines.into_iter().map(|(_, l)| l + "\n").collect(), uncommented)
}

/// The commented-out blocks of config.example.yaml are valid once
/// uncommented (alone, or in place of what they replace); every commented
/// line that looks like a setting is in one of them.
#[test]
fn the_example_configs_commented_blocks_are_valid_when_uncommented() {
    use Edit::*;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let variants: &[(&str, &[Edit])] = &[
        ("listen.tls", &[Uncomment("# tls:")]),
        ("runtime.workers", &[Uncomment("# workers: 2")]),
        ("admin.token_file", &[Uncomment("# token_file: /etc/tokex/admin-token")]),
        ("revocation_endpoint", &[Uncomment("# revocation_endpoint: https://as.example.com/oauth2/revoke")]),
        ("revocation.ssf", &[Uncomment("# revocation:")]),
        ("authz beside the proxy listener", &[Uncomment("# authz:")]),
        ("authz alone (check-only)", &[Uncomment("# authz:"), Delete("listen:")]),
        ("issuer", &[Delete("token_endpoint: https://as.example.com/oauth2/token"), Uncomment("# issuer: https://")]),
        ("ca_file", &[Uncomment("# ca_file: /etc/tokex/as-ca.pem")]),
        (
            "inbound.jwt with every option and require_scopes",
            &[
                Uncomment("# inbound:"),
                Uncomment("# max_token_bytes:"),
                Uncomment("# jwks_refresh_min:"),
                Uncomment("# jwks_refresh_max:"),
                Uncomment("# unknown_kid_cooldown:"),
                Uncomment("# require_scopes: [orders:read]"),
            ],
        ),
        ("inbound.introspection", &[Uncomment("# inbound:"), Delete("  jwt:"), Uncomment("# introspection:")]),
        ("inbound.dpop_proof", &[Uncomment("# inbound:"), Uncomment("# dpop_proof:")]),
        ("dpop key", &[Uncomment("# dpop:")]),
        ("tracing", &[Uncomment("# tracing:")]),
        (
            "https upstream with upstream_tls",
            &[
                Delete("# or, instead, the https backend below"),
                Uncomment("# upstream: https://orders.internal:8443"),
                Uncomment("# upstream_tls:"),
            ],
        ),
        ("actor", &[Uncomment("# actor:")]),
        ("actor and may_act", &[Uncomment("# actor:"), Uncomment("# enforce_may_act: true")]),
        ("an MCP route (RFC 9728)", &[Uncomment("# - name: mcp-files")]),
        (
            "an MCP route with identity chaining",
            &[Uncomment("# partner:"), Uncomment("# - name: mcp-files"), Uncomment("# chain:")],
        ),
        ("a transaction-token route", &[Uncomment("# txn-service:"), Uncomment("# - name: internal-txn")]),
        ("error_map", &[Uncomment("# error_map:")]),
        (
            "grant and extra_params (a claim value needs inbound)",
            &[Uncomment("# inbound:"), Uncomment("# grant: token_exchange"), Uncomment("# extra_params:")],
        ),
        (
            "cache.shared",
            &[Uncomment("# shared:"), Uncomment("# ca_file: /etc/tokex/redis-ca.pem"), Uncomment("# key_secret_file:")],
        ),
    ];
    let mut covered = std::collections::BTreeSet::new();
    let dir = temp_dir("example-variants");
    for (name, edits) in variants {
        let (variant, uncommented) = apply(&text, edits);
        covered.extend(uncommented);
        let file = dir.join("variant.yaml");
        std::fs::write(&file, &variant).unwrap();
        let (code, out) = tokex(&["check", "--offline", "-c", file.to_str().unwrap()], &[("TOKEX_CLIENT_SECRET", "x")]);
        assert_eq!(code, 0, "variant {name:?} does not check:\n{out}\n--- the variant:\n{variant}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Every commented line that looks like `key: value` is exercised.
    for (number, line) in text.lines().enumerate() {
        let Some(body) = line.trim_start().strip_prefix('#') else { continue };
        let body = body.trim_start_matches(['#', ' ']);
        let key: String = body.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        let looks_like_setting = !key.is_empty() && body[key.len()..].starts_with(':');
        assert!(
            !looks_like_setting || covered.contains(&number),
            "line {} of config.example.yaml is a commented setting no variant uncomments: {line}",
            number + 1
        );
    }
}

/// Offline, a `${VAR}` may stand anywhere a string does: its value's checks
/// are skipped, whatever the field; the rest is still checked.
#[test]
fn offline_skips_the_checks_of_every_unset_value_and_cannot_be_run() {
    let yaml = r#"listen: { address: "${TKX_OFF_LISTEN}" }
authorization_servers:
  corp:
    token_endpoint: ${TKX_OFF_AS_URL}
    client_auth: { method: "${TKX_OFF_METHOD}", client_id: tokex, client_secret: "${TKX_OFF_SECRET}" }
  mtls:
    token_endpoint: ${TKX_OFF_AS2}
    client_auth: { method: tls_client_auth, client_id: x, cert_file: /absent/c.pem, key_file: /absent/k.pem }
routes:
  - name: "${TKX_OFF_NAME}"
    match: { path_prefix: "${TKX_OFF_PREFIX}", methods: ["${TKX_OFF_M}"], headers: { x-tenant: "${TKX_OFF_T}" } }
    upstream: ${TKX_OFF_U}
    upstream_tls: { ca_file: /absent/ca.pem }
    exchange: { authorization_server: corp, resource: ["${TKX_OFF_RES}"] }
    forward: { header: "${TKX_OFF_H}" }
  - name: other
    upstream: http://127.0.0.1:1
    exchange: { authorization_server: mtls, audience: [""] }
"#;
    let (code, out) = check_file(yaml, &["--offline"], &[]);
    assert_eq!(code, 1, "{out}");
    // Only the one real mistake: an empty audience.
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("routes[1].exchange.audience[0] (line 18)"), "{out}");

    let fixed = yaml.replace("audience: [\"\"]", "audience: [api]");
    let (code, out) = check_file(&fixed, &["--offline"], &[]);
    assert_eq!(code, 0, "{out}");
    // Each unset variable is named where it is first used.
    assert!(out.contains("warning: routes[0].upstream (line 12): environment variable TKX_OFF_U is not set"), "{out}");

    // Such a config is for reporting only: it is never built into a gateway.
    let options = tokex::config::Options { offline: true };
    let config = tokex::config::parse_with(&fixed, options).unwrap();
    let err = tokex::app::build_runtime(&config, &tokex::metrics::Metrics::new(), None).err().unwrap();
    assert!(err.to_string().contains("--offline"), "{err}");
    // And offline parsing leaves no trace on the thread: a normal parse
    // refuses the unset variables again.
    assert!(tokex::config::parse(&fixed).is_err());
}

/// Errors found when the files are read (a runtime build) name their
/// setting and line too.
#[test]
fn file_errors_name_their_setting() {
    let dir = temp_dir("check-files");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:8080\" }}\nauthorization_servers:\n  corp:\n    token_endpoint: https://as.example.com/token\n    ca_file: {}\nroutes:\n  - {{ name: r, upstream: \"http://127.0.0.1:1\", exchange: {{ authorization_server: corp }} }}\n",
        ca.display()
    );
    let (code, out) = check_file(&yaml, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: authorization_servers.corp (line 3): ") && out.contains("no PEM certificate"),
        "{out}"
    );
    // Offline does not read it.
    assert_eq!(check_file(&yaml, &["--offline"], &[]).0, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JWKS from a server that is in error is one error, not two.
#[test]
fn inbound_from_a_broken_server_is_one_error() {
    let yaml = r#"listen: { address: "127.0.0.1:8080" }
authorization_servers:
  corp: { issuer: "not a url" }
inbound:
  jwt: { authorization_server: corp, audiences: [gw] }
routes:
  - { name: r, upstream: "http://127.0.0.1:1", exchange: { authorization_server: corp } }
"#;
    let (code, out) = check_file(yaml, &[], &[]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("authorization_servers.corp.issuer (line 3)"), "{out}");
}

/// `check --explain` shows each route's token request as the provider
/// profile shapes it, secrets redacted, as text and as JSON.
#[test]
fn explain_prints_the_effective_token_request_without_secrets() {
    let yaml = r#"listen: { address: "127.0.0.1:8080" }
inbound: { jwt: { issuer: "https://login.microsoftonline.com/t/v2.0", jwks_uri: "https://login.microsoftonline.com/t/discovery/v2.0/keys", audiences: ["api://tokex"] } }
authorization_servers:
  entra:
    token_endpoint: https://login.microsoftonline.com/t/oauth2/v2.0/token
    profile: entra
    client_auth: { method: client_secret_jwt, client_id: tokex, client_secret: "${EXPLAIN_SECRET}" }
  google: { token_endpoint: "https://sts.googleapis.com/v1/token", profile: google_sts }
routes:
  - name: graph
    match: { path_prefix: /graph }
    upstream: http://127.0.0.1:8081
    exchange:
      authorization_server: entra
      scope: [https://graph.microsoft.com/.default]
      extra_params: { tenant_hint: contoso, tid: { claim: tid, required: true } }
  - name: gcs
    upstream: http://127.0.0.1:8082
    exchange: { authorization_server: google, audience: ["//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"], scope: [https://www.googleapis.com/auth/cloud-platform] }
"#;
    let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
    let (code, out) = check_file(yaml, &["--explain"], &[("EXPLAIN_SECRET", secret)]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "route graph: on_behalf_of at authorization server entra (profile entra)",
        "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion=<the caller's token>",
        "requested_token_use=on_behalf_of",
        "tid=<claim tid of the caller's token; required>",
        "client authentication: client_secret_jwt: client_id=tokex",
        "AADSTS50079 -> 401 insufficient_user_authentication",
        "route gcs: token_exchange at authorization server google (profile google_sts)",
        "subject_token_type=urn:ietf:params:oauth:token-type:jwt",
        "requested_token_type=urn:ietf:params:oauth:token-type:access_token",
        "invalid_target -> 502",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    }
    assert!(!out.contains(secret), "{out}");
    let (code, out) = check_file(yaml, &["--explain", "--log-format", "json"], &[("EXPLAIN_SECRET", secret)]);
    assert_eq!(code, 0, "{out}");
    let routes: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("explain").cloned())
        .collect();
    assert_eq!(routes.len(), 2, "{out}");
    assert_eq!(routes[0]["grant"], "on_behalf_of");
    assert_eq!(routes[0]["params"][1], serde_json::json!(["assertion", "<the caller's token>"]));
    assert!(!out.contains(secret));
}

/// `check --explain` shows both legs of identity chaining as they are sent.
#[test]
fn explain_shows_both_legs_of_a_chain() {
    let yaml = "listen: { address: \"127.0.0.1:8080\" }\nauthorization_servers:\n  home: { token_endpoint: \"https://home.example/token\" }\n  partner: { issuer: \"https://as.partner.example\" }\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:2\n    exchange:\n      authorization_server: home\n      audience: [extra]\n      scope: [read]\n      chain: { authorization_server: partner, audience: [partner-api], scope: [read] }\n";
    let (code, out) = check_file(yaml, &["--offline", "--explain"], &[]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "  requested_token_type=urn:ietf:params:oauth:token-type:jwt",
        "  audience=https://as.partner.example\n  audience=extra",
        "  then, at authorization server partner (identity chaining):\n  grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer\n  assertion=<the JWT grant above>\n  audience=partner-api\n  scope=read",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let (code, out) = check_file(yaml, &["--offline", "--explain", "--log-format", "json"], &[]);
    assert_eq!(code, 0, "{out}");
    let explained: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("explain").cloned())
        .collect();
    assert_eq!(explained[0]["chain"]["authorization_server"], "partner");
    assert_eq!(explained[0]["chain"]["grant"], "jwt_bearer");
}
