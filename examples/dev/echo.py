#!/usr/bin/env python3
"""A backend for trying tokex by hand (examples/dev/config.yaml's upstream).

Answers every request with what it received: method, path, headers, and the
claims of the bearer token, decoded but NOT verified (the token itself is not
shown). Standard library only; listens on 127.0.0.1.

    python3 examples/dev/echo.py [PORT]        # default 8081
"""

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def claims(token):
    """The payload of a JWT, unverified; None if it is not one."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None


class Echo(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        body = {
            "method": self.command,
            "path": self.path,
            "received_token": token is not None,
            "token_claims": claims(token) if token else None,
            "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"},
        }
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = answer


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    print(f"echo backend on http://127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
