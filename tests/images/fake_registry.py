"""A tiny stdlib registry serving an OCI layout, for what the real one cannot easily do:
Bearer/Basic auth challenges, 503s, corrupt blobs, request counting and slow blobs."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN = "t0ken"


@dataclass
class Behaviour:
    auth: str = ""  # "", "basic" or "bearer"
    user: str = "alice"
    password: str = "secret"
    fail_first: int = 0  # answer this many requests with 503 first
    corrupt: set[str] = field(default_factory=set)  # blob digests served with a flipped byte
    blob_delay: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # path -> count
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeRegistry:
    def __init__(self, layout: Path, behaviour: Behaviour | None = None) -> None:
        self.layout = layout
        self.behaviour = behaviour or Behaviour()
        handler = type("Handler", (_Handler,), {"registry": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def blob_gets(self) -> Counter[str]:
        return Counter({p.rsplit("/", 1)[1]: n for p, n in self.behaviour.requests.items() if "/blobs/" in p})

    def manifest_for(self, reference: str) -> tuple[bytes, str] | None:
        if not reference.startswith("sha256:"):
            index = json.loads((self.layout / "index.json").read_text())
            entries = [
                m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == reference
            ]
            if not entries:
                return None
            reference = entries[0]["digest"]
        path = self.layout / "blobs/sha256" / reference.removeprefix("sha256:")
        if not path.exists():
            return None
        data = path.read_bytes()
        return data, json.loads(data).get("mediaType", "")


class _Handler(BaseHTTPRequestHandler):
    registry: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        b = self.registry.behaviour
        with b.lock:
            b.requests[self.path.split("?")[0]] += 1
            failing = b.fail_first > 0
            b.fail_first -= 1 if failing else 0
        if failing:
            return self._send(503, b"busy")
        if self.path.startswith("/token"):
            return self._token()
        if not self._authorised():
            return None
        parts = self.path.split("?")[0].split("/")
        if self.path in ("/v2/", "/v2"):
            return self._send(200, b"{}")
        if len(parts) >= 5 and parts[-2] == "manifests":
            found = self.registry.manifest_for(parts[-1])
            if found is None:
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return self._send(200, found[0], found[1])
        if len(parts) >= 5 and parts[-2] == "blobs":
            return self._blob(parts[-1])
        return self._send(404, b"")

    def _blob(self, digest: str) -> None:
        b = self.registry.behaviour
        path = self.registry.layout / "blobs/sha256" / digest.removeprefix("sha256:")
        if not path.exists():
            return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        data = path.read_bytes()
        if digest in b.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        time.sleep(b.blob_delay)
        self._send(200, data, "application/octet-stream")

    def _authorised(self) -> bool:
        b = self.registry.behaviour
        got = self.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"{b.user}:{b.password}".encode()).decode()
        if b.auth == "" or (b.auth == "basic" and got == basic) or (b.auth == "bearer" and got == f"Bearer {TOKEN}"):
            return True
        if b.auth == "basic":
            challenge = 'Basic realm="fake"'
        else:
            realm = f"http://{self.registry.host}/token"
            challenge = f'Bearer realm="{realm}",service="fake",scope="repository:busybox:pull"'
        self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', headers={"WWW-Authenticate": challenge})
        return False

    def _token(self) -> None:
        b = self.registry.behaviour
        basic = "Basic " + base64.b64encode(f"{b.user}:{b.password}".encode()).decode()
        if self.headers.get("Authorization") != basic or "scope=repository" not in self.path:
            return self._send(401, b"{}")
        self._send(200, json.dumps({"token": TOKEN}).encode())

    def _send(
        self, code: int, body: bytes, ctype: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
