"""DPoP (RFC 9449) proofs checked and made by an independent implementation:
IdentityPython's idpyoidc (`idpyoidc.*.oauth2.add_on.dpop`) on cryptojwt.
tests/dpop_interop.rs runs it with TOKEX_PYTHON; scripts/test.sh installs
the pinned packages.

    python dpop_check.py COMMAND < request.json > answer.json

COMMAND is one of
  keygen  {"algs": ["ES256", "EdDSA"]}
          -> [{"alg", "jwk" (private), "jkt", "pkcs8_pem"}]: keys made by
             cryptojwt's key_by_alg (as idpyoidc's DPoP client makes them)
  prove   [{"jwk", "alg", "htm", "htu", "token"}]
          -> [{"proof"}]: proofs made by idpyoidc's client DPoPProof
  verify  [{"proof", "htm", "htu", "token" (or null), "jkt" (optional)}]
          -> [{"jkt", "alg", "jti", "header", "claims"}]

verify fails (exit 1, the proof and the reason on stderr) unless each proof
passes idpyoidc's server-side checks -- DPoPProof.verify_header (the JWS
signature with the `jwk` of its header, for the header's `alg`),
DPoPProof.verify (required members and their types, typ dpop+jwt, alg not
none), and token_post_parse_request for a token request's proof or
userinfo_post_parse_request for a resource request's (htm, htu without the
query, RFC 7638 thumbprint; ath left out, see below) -- and
these, done here by hand because idpyoidc does not do them or does them
otherwise than RFC 9449:
  - ath: base64url(SHA-256(token)) without padding (RFC 9449 §4.2).
    idpyoidc 5.0.0 writes and expects the hex SHA-256 instead
    (userinfo_post_parse_request, dpop_header), so its ath check would
    refuse every RFC 9449 proof; a proof sent without a token has no ath;
  - iat within 60 s of now, jti unique in the batch, no private member in
    the jwk, no nonce (none was asked for);
  - the thumbprint computed again from RFC 7638's text, and equal to `jkt`
    when one is given;
  - the verifier is not vacuous: the same proof with one claim altered
    (htm) must fail idpyoidc's signature check.
"""

import base64
import hashlib
import json
import sys
import time
import uuid

from cryptojwt.jwk.jwk import key_from_jwk_dict
from cryptojwt.key_bundle import key_by_alg
from cryptography.hazmat.primitives import serialization
from idpyoidc.client.oauth2.add_on.dpop import DPoPProof as ClientProof
from idpyoidc.server.oauth2.add_on.dpop import DPoPProof as ServerProof
from idpyoidc.server.oauth2.add_on.dpop import token_post_parse_request
from idpyoidc.server.oauth2.add_on.dpop import userinfo_post_parse_request

MAX_AGE = 60
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


class Refused(Exception):
    pass


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode()).digest())


def rfc7638(jwk: dict) -> str:
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


def keygen(req):
    out = []
    for alg in req["algs"]:
        key = key_by_alg(alg)
        pem = key.priv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        out.append(
            {
                "alg": alg,
                "jwk": key.serialize(private=True),
                "jkt": key.thumbprint("SHA-256").decode(),
                "pkcs8_pem": pem.decode(),
            }
        )
    return out


def prove(req):
    out = []
    for item in req:
        key = key_from_jwk_dict(item["jwk"], private=True)
        claims = {
            "typ": "dpop+jwt",
            "alg": item["alg"],
            "jwk": key.serialize(),  # the public members only
            "jti": uuid.uuid4().hex,
            "htm": item["htm"],
            "htu": item["htu"],
            "iat": int(time.time()),
        }
        if item.get("token") is not None:
            claims["ath"] = ath(item["token"])  # idpyoidc's dpop_header would write hex
        proof = ClientProof(**claims)
        proof.key = key
        out.append({"proof": proof.create_header()})
    return out


def verify_one(item, now):
    proof = item["proof"]
    try:
        checked = ServerProof().verify_header(proof)
        if checked is None:
            raise Refused("not a JWS")
        checked.verify()
        # The library's own checks of a token request's proof, or of a
        # resource request's (without its hex ath): htm, htu, thumbprint.
        http_info = {"headers": {"dpop": proof}, "url": item["htu"], "method": item["htm"]}
        if item.get("token") is None:
            jkt = token_post_parse_request({}, None, None, http_info=http_info)["dpop_jkt"]
        else:
            jkt = userinfo_post_parse_request({}, None, None, auth_info={}, http_info=http_info)["dpop_jkt"]
    except Refused:
        raise
    except Exception as e:  # the library's refusal, whatever its type
        raise Refused(f"idpyoidc: {type(e).__name__}: {e}") from e

    h, p, s = proof.split(".")
    header, claims = json.loads(unb64(h)), json.loads(unb64(p))
    jwk = header["jwk"]
    if any(m in jwk for m in PRIVATE_MEMBERS):
        raise Refused("the jwk has a private member")
    if rfc7638(jwk) != jkt:
        raise Refused(f"thumbprints differ: idpyoidc {jkt}, RFC 7638 by hand {rfc7638(jwk)}")
    if item.get("jkt") and item["jkt"] != jkt:
        raise Refused(f"jkt {jkt}, expected {item['jkt']}")
    if not isinstance(claims.get("iat"), int) or abs(now - claims["iat"]) > MAX_AGE:
        raise Refused(f"iat {claims.get('iat')} is not within {MAX_AGE} s of {now}")
    token = item.get("token")
    if token is None and "ath" in claims:
        raise Refused("ath in a proof sent without an access token")
    if token is not None and claims.get("ath") != ath(token):
        raise Refused(f"ath {claims.get('ath')!r}, expected base64url(sha256(token)) {ath(token)!r}")
    if "nonce" in claims:
        raise Refused("a nonce that was not asked for")

    altered = dict(claims, htm="PATCH" if claims["htm"] != "PATCH" else "PUT")
    forged = f"{h}.{b64(json.dumps(altered).encode())}.{s}"
    try:
        ServerProof().verify_header(forged)
    except Exception:
        pass
    else:
        raise Refused("self-check: idpyoidc accepted the proof with htm altered")

    return {"jkt": jkt, "alg": header["alg"], "jti": claims["jti"], "header": header, "claims": claims}


def verify(req):
    # RFC 9449 §7.1, Figure 13: the access token and its ath.
    assert ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    now = int(time.time())
    out = []
    for i, item in enumerate(req):
        try:
            out.append(verify_one(item, now))
        except Refused as e:
            sys.exit(f"proof {i} refused: {e}\n  proof: {item['proof']}\n  expected: {json.dumps(item)}")
    jtis = [v["jti"] for v in out]
    if len(set(jtis)) != len(jtis):
        sys.exit(f"a jti used twice: {jtis}")
    return out


def main():
    commands = {"keygen": keygen, "prove": prove, "verify": verify}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)} < request.json")
    json.dump(commands[sys.argv[1]](json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
