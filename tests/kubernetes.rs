//! What tokex ships for Kubernetes is valid: `tests/deploy/validate.py`
//! checks the manifests under `examples/kubernetes/` and the chart's committed
//! renders under `tests/deploy/rendered/` (strict Kubernetes schemas,
//! selectors, ports, mounts, probes, timers, security contexts), the Istio,
//! Envoy Gateway and Gateway API objects of the examples against the schemas
//! in `tests/deploy/schemas/` and against the tokex they call (Service and
//! port of the check listener, path prefix, timeout, headers, routes), that
//! the wrong manifests under `tests/deploy/bad-manifests/` are refused, the
//! chart's values against `values.schema.json` (good files pass, bad ones
//! fail), every embedded tokex config with this build's `tokex check
//! --offline`, and, where `helm` is installed, `helm lint` and that a fresh
//! `helm template` still gives the committed renders.
//!
//! The Python interpreter comes from `TOKEX_PYTHON`, with `kubernetes-validate`,
//! `jsonschema` and `PyYAML` installed; `scripts/test.sh` sets both up. The
//! test fails, never skips, without them.

use std::path::Path;
use std::process::Command;

const SETUP: &str = "run the test command from the README (`bash scripts/test.sh`, which installs them into .venv \
                     and sets TOKEX_PYTHON), or by hand:\n  python3 -m venv .venv && .venv/bin/pip install \
                     kubernetes-validate jsonschema PyYAML\n  TOKEX_PYTHON=$PWD/.venv/bin/python cargo test --test kubernetes";

#[test]
fn kubernetes_examples_chart_values_and_embedded_configs_are_valid() {
    let python = std::env::var_os("TOKEX_PYTHON")
        .unwrap_or_else(|| panic!("TOKEX_PYTHON is not set: this test needs a Python with its packages; {SETUP}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let probe = Command::new(&python)
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output()
        .unwrap_or_else(|e| panic!("TOKEX_PYTHON={python:?} does not run ({e}); {SETUP}"));
    assert!(
        probe.status.success(),
        "TOKEX_PYTHON={python:?} lacks a package:\n{}\n{SETUP}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let out = Command::new(&python)
        .arg(root.join("tests/deploy/validate.py"))
        .arg("--tokex")
        .arg(env!("CARGO_BIN_EXE_tokex"))
        .current_dir(root)
        .output()
        .expect("run tests/deploy/validate.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/deploy/validate.py failed ({}):\n{text}", out.status);
    // Shown with --nocapture: what was checked, against which versions.
    println!("{text}");
}
