//! `tokex::config::parse` on arbitrary text: Ok or Err, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The seeds name this variable (config.example.yaml's client secret):
    // set, so their validation goes past interpolation.
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| std::env::set_var("TOKEX_CLIENT_SECRET", "fuzz-secret"));
    // Invalid UTF-8 becomes U+FFFD: every input is some UTF-8 text.
    let text = String::from_utf8_lossy(data);
    let _ = tokex::config::parse(&text);
});
