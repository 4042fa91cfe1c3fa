//! What one DPoP proof costs tokex (issue 17): signing a proof for a
//! backend (ES256 and EdDSA keys), verifying a caller's proof, and the
//! replay cache. One core, release build:
//!
//!     cargo run --release --example dpop_cost [iterations]

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use tokex::dpop::{self, Expect, ProofKey, ReplayCache};

fn per_op(n: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..n / 10 {
        f(i);
    }
    let started = Instant::now();
    for i in 0..n {
        f(i);
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let token = "x".repeat(800);
    let ath = dpop::ath(&token);
    let htu = "http://orders.internal:8080/orders/42";
    println!("{n} iterations each, one thread");
    println!("ath of an 800-byte token (once per cached token): {:.2} µs", per_op(n, |_| drop(dpop::ath(&token))));
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let key = ProofKey::generate(alg).expect("key");
        let sign = per_op(n, |_| drop(key.proof("GET", htu, Some(&ath), None).expect("proof")));
        let proof = key.proof("GET", htu, Some(&ath), None).expect("proof");
        let want = Expect {
            algorithms: &[Algorithm::ES256, Algorithm::EdDSA],
            htm: "GET",
            htu,
            origins: &[],
            token: Some(&token),
            nonce: None,
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
        };
        let verify = per_op(n, |_| drop(dpop::verify(&proof, &want).expect("verifies")));
        println!("{alg:?}: sign a proof {sign:.2} µs, verify one {verify:.2} µs ({} bytes)", proof.len());
    }
    let cache = ReplayCache::new(10_000_000);
    let v = dpop::verify(
        &ProofKey::generate(Algorithm::ES256).expect("key").proof("GET", htu, None, None).expect("proof"),
        &Expect {
            algorithms: &[Algorithm::ES256],
            htm: "GET",
            htu,
            origins: &[],
            token: None,
            nonce: None,
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
        },
    )
    .expect("verifies");
    let replay = per_op(n, |i| {
        let fresh = dpop::Verified { jti: format!("{i}-{}", v.jti), ..v.clone() };
        let _ = cache.first_use(&fresh, Duration::from_secs(65));
    });
    println!("replay cache, remember a new proof: {replay:.2} µs ({} held)", cache.len());
}
