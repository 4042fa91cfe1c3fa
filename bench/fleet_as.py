#!/usr/bin/env python3
"""The counting fast AS of the fleet run (bench/fleet.py starts it): `fleet_as.py PORT`.
Answers every `POST /token` with one fixed token JSON (bench.py's ISSUED_TOKEN, the
answer of the main run's nginx AS) and counts the calls per `subject_token`;
`GET /stats` returns {calls, distinct, per_subject: {calls: subjects}} since the
previous `/stats` and starts again. Keep-alive, Content-Length bodies only."""

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def serve_as(port):
    answer = json.dumps({
        "access_token": bench.ISSUED_TOKEN,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": 3600,
    }).encode()
    token_reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                   b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)
    per_subject = Counter()

    def reply(status, body, ctype=b"text/plain"):
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.buf = b""

        def data_received(self, data):
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = self.buf[:end].split(b"\r\n")
                length, close = 0, False
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                    elif k == b"transfer-encoding":
                        self.t.write(reply(b"501 Not Implemented", b"no chunked bodies\n"))
                        self.t.close()
                        return
                if len(self.buf) < end + 4 + length:
                    return
                body = self.buf[end + 4:end + 4 + length]
                self.buf = self.buf[end + 4 + length:]
                method, target = (lines[0].split(b" ") + [b"", b""])[:2]
                if method == b"POST" and target == b"/token":
                    subject = parse_qs(body.decode("ascii", "replace")).get("subject_token", [""])[0]
                    per_subject[subject] += 1
                    self.t.write(token_reply)
                elif method == b"GET" and target == b"/stats":
                    counts = Counter(per_subject.values())
                    stats = {"calls": sum(per_subject.values()), "distinct": len(per_subject),
                             "per_subject": {str(k): v for k, v in sorted(counts.items())}}
                    per_subject.clear()
                    self.t.write(reply(b"200 OK", json.dumps(stats).encode(), b"application/json"))
                else:
                    self.t.write(reply(b"404 Not Found", b"not here\n"))
                if close:
                    self.t.close()
                    return

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Proto, "127.0.0.1", port, backlog=4096)
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


if __name__ == "__main__":
    serve_as(int(sys.argv[1]))
