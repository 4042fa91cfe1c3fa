use super::*;
use crate::dpop::ProofKey;

/// RFC 9449 Figure 3 (§5): the example token request's proof, and the
/// thumbprint §6.1 gives for its key.
const RFC_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
const RFC_IAT: f64 = 1_562_262_616.0;

const ALGS: &[Algorithm] = &[Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256];

fn expect<'a>(htm: &'a str, htu: &'a str, token: Option<&'a str>) -> Expect<'a> {
    Expect {
        algorithms: ALGS,
        htm,
        htu,
        origins: &[],
        token,
        nonce: None,
        max_age: Duration::from_secs(60),
        leeway: Duration::from_secs(5),
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn the_rfc_example_proof_verifies_with_its_thumbprint() {
    let want = expect("POST", "https://server.example.com/token", None);
    let v = verify_at(RFC_PROOF, &want, RFC_IAT + 1.0).unwrap();
    assert_eq!(v.jkt, RFC_JKT);
    assert_eq!(v.jti, "-BwC3ESc6acc2lTc");
    // The same proof checked against another request, or too late.
    assert_eq!(
        verify_at(RFC_PROOF, &expect("GET", "https://server.example.com/token", None), RFC_IAT),
        Err(ProofError::Htm)
    );
    assert_eq!(
        verify_at(RFC_PROOF, &expect("POST", "https://server.example.com/other", None), RFC_IAT),
        Err(ProofError::Htu)
    );
    assert_eq!(verify_at(RFC_PROOF, &want, RFC_IAT + 61.0), Err(ProofError::Iat));
    assert_eq!(verify_at(RFC_PROOF, &want, RFC_IAT - 6.0), Err(ProofError::Iat), "from the future");
    // The signature's first character changed ('2' → '3').
    let cut = RFC_PROOF.rfind('.').unwrap() + 1;
    let tampered = format!("{}3{}", &RFC_PROOF[..cut], &RFC_PROOF[cut + 1..]);
    assert_eq!(verify_at(&tampered, &want, RFC_IAT), Err(ProofError::Signature));
}

#[test]
fn tokex_proofs_verify_for_both_key_types() {
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let key = ProofKey::generate(alg).unwrap();
        let token = "an-access-token";
        let proof =
            key.proof("GET", "https://api.example.com/orders", Some(&crate::dpop::ath(token)), Some("n1")).unwrap();
        let mut want = expect("GET", "https://API.example.com:443/orders?x=1", Some(token));
        want.nonce = Some("n1");
        let v = verify(&proof, &want).unwrap();
        assert_eq!(v.jkt, key.jkt(), "{alg:?}");
        want.nonce = Some("n2");
        assert_eq!(verify(&proof, &want), Err(ProofError::Nonce));
        want.nonce = None;
        want.token = Some("another-token");
        assert_eq!(verify(&proof, &want), Err(ProofError::Ath));
        want.token = None;
        assert_eq!(verify(&proof, &want), Err(ProofError::Ath), "an ath where no token goes");
        let only_es =
            Expect { algorithms: &[Algorithm::ES384], ..expect("GET", "https://api.example.com/orders", Some(token)) };
        assert_eq!(verify(&proof, &only_es), Err(ProofError::Alg));
    }
}

/// A proof with `header` and `claims` as given, signed by `key` (a P-256
/// key, whatever the header says).
fn forged(key: &ProofKey, header: serde_json::Value, claims: serde_json::Value) -> String {
    // Sign a real proof, then splice: only the signature over the new
    // segments matters, and ProofKey signs whatever it is given.
    let h = b64(header.to_string().as_bytes());
    let c = b64(claims.to_string().as_bytes());
    let signing = format!("{h}.{c}");
    let sig = key.sign_raw(signing.as_bytes());
    format!("{signing}.{}", b64(&sig))
}

#[test]
fn every_check_refuses_its_bad_case() {
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let jwk = key.public_jwk().clone();
    let t = now() as u64;
    let good_header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let good_claims = serde_json::json!({"jti": "j1", "htm": "GET", "htu": "https://a.example/x", "iat": t});
    let want = expect("GET", "https://a.example/x", None);
    assert!(verify(&forged(&key, good_header.clone(), good_claims.clone()), &want).is_ok());

    let with = |patch: serde_json::Value, into_header: bool| {
        let (mut h, mut c) = (good_header.clone(), good_claims.clone());
        let target = if into_header { &mut h } else { &mut c };
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                target.as_object_mut().unwrap().remove(k);
            } else {
                target[k] = v.clone();
            }
        }
        verify(&forged(&key, h, c), &want)
    };
    assert_eq!(with(serde_json::json!({"typ": "JWT"}), true), Err(ProofError::Typ));
    assert_eq!(with(serde_json::json!({"typ": null}), true), Err(ProofError::Typ));
    assert_eq!(with(serde_json::json!({"alg": "HS256"}), true), Err(ProofError::Alg));
    assert_eq!(with(serde_json::json!({"alg": "none"}), true), Err(ProofError::Alg));
    assert_eq!(with(serde_json::json!({"alg": "ES384"}), true), Err(ProofError::Alg), "not in the allow-list");
    assert_eq!(with(serde_json::json!({"alg": "EdDSA"}), true), Err(ProofError::Jwk), "alg and key disagree");
    assert_eq!(with(serde_json::json!({"jwk": null}), true), Err(ProofError::Jwk));
    let mut private = jwk.clone();
    private["d"] = serde_json::json!("AAAA");
    assert_eq!(with(serde_json::json!({"jwk": private}), true), Err(ProofError::Jwk), "a private key");
    let other = ProofKey::generate(Algorithm::ES256).unwrap();
    assert_eq!(with(serde_json::json!({"jwk": other.public_jwk()}), true), Err(ProofError::Signature));
    assert_eq!(with(serde_json::json!({"crit": ["x"]}), true), Err(ProofError::Malformed));
    assert_eq!(with(serde_json::json!({"jti": null}), false), Err(ProofError::Claims));
    assert_eq!(with(serde_json::json!({"jti": ""}), false), Err(ProofError::Claims));
    assert_eq!(with(serde_json::json!({"iat": "now"}), false), Err(ProofError::Claims));
    assert_eq!(with(serde_json::json!({"htm": "get"}), false), Err(ProofError::Htm), "methods are case-sensitive");
    assert_eq!(with(serde_json::json!({"htu": "http://a.example/x"}), false), Err(ProofError::Htu));
    assert_eq!(with(serde_json::json!({"htu": "https://a.example:8443/x"}), false), Err(ProofError::Htu));
    assert_eq!(with(serde_json::json!({"htu": "https://u@a.example/x"}), false), Err(ProofError::Htu));
    assert_eq!(with(serde_json::json!({"htu": "/x"}), false), Err(ProofError::Htu));
    assert_eq!(with(serde_json::json!({"iat": t - 120}), false), Err(ProofError::Iat));
    assert_eq!(with(serde_json::json!({"ath": "x"}), false), Err(ProofError::Ath));
    assert_eq!(verify("a.b", &want), Err(ProofError::Malformed));
    assert_eq!(verify(&"a".repeat(MAX_PROOF_BYTES + 1), &want), Err(ProofError::Malformed));
}

#[test]
fn htu_is_compared_after_normalisation() {
    for (a, b) in [
        ("https://a.example/x", "HTTPS://A.EXAMPLE:443/x"),
        ("http://a.example:80/x", "http://a.example/x"),
        ("https://a.example/x?q=1#f", "https://a.example/x"),
        ("https://a.example/%7Euser/a%2fb", "https://a.example/~user/a%2Fb"),
        ("https://a.example/a/./b/../c", "https://a.example/a/c"),
    ] {
        assert!(same_uri(a, b), "{a} = {b}");
    }
    for (a, b) in [
        ("https://a.example/x", "https://a.example/X"),
        ("https://a.example/x/", "https://a.example/x"),
        ("https://a.example/a%2Fb", "https://a.example/a/b"),
        ("https://b.example/x", "https://a.example/x"),
    ] {
        assert!(!same_uri(a, b), "{a} != {b}");
    }
}
