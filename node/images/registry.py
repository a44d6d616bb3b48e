"""Pull from an OCI distribution registry with httpx: manifest negotiation, auth, retries, verified blobs.

Plain HTTP is used only for insecure registries: loopback (127.0.0.0/8, ::1, localhost) and the
configured list; HTTPS otherwise. A 401 is answered once per request with the challenge's scheme
(Bearer token from the realm, or Basic) using credentials from the auth file; tokens are cached per
repository. Connection errors, 429 and 5xx are retried with exponential backoff and jitter.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

from node.images.auth import Credentials, credentials_for, parse_challenge
from node.images.digest import sha256_digest
from node.images.errors import DigestMismatch, ImageError, ImageNotFound, RegistryUnreachable, Unauthorized
from node.images.manifest import (
    ACCEPT,
    INDEX_TYPES,
    Descriptor,
    Platform,
    load_json,
    media_type_of,
    parse_manifest,
    select_platform,
    verify_bytes,
)
from node.images.reference import DOCKER_HUB, Reference
from node.images.source import CHUNK, MAX_SMALL_BLOB, Resolved, check_digest, resolved

T = TypeVar("T")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class _Retryable(Exception):
    pass


def is_insecure(registry: str, insecure: Sequence[str]) -> bool:
    if registry in insecure:
        return True
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    if host in insecure or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One per store; thread-safe (httpx.Client is, and the token cache is locked)."""

    def __init__(
        self,
        credentials: dict[str, Credentials],
        insecure: Sequence[str] = (),
        *,
        attempts: int = 4,
        backoff: float = 0.2,
        timeout: float = 30.0,
    ) -> None:
        self._creds = credentials
        self._insecure = tuple(insecure)
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._client: httpx.Client | None = None  # created on first use: most stores never pull
        self._auth: dict[tuple[str, str], str] = {}  # (registry, repository) -> Authorization header
        self._lock = threading.Lock()

    @property
    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout, follow_redirects=True)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def base_url(self, registry: str) -> str:
        host = "registry-1.docker.io" if registry == DOCKER_HUB else registry
        return ("http" if is_insecure(registry, self._insecure) else "https") + f"://{host}"

    def resolve(self, ref: Reference, want: Platform) -> Resolved:
        image = str(ref)
        raw, ctype = self._manifest(ref, ref.remote_reference, image)
        if ref.digest:
            verify_bytes(raw, ref.digest, f"pull {image}: manifest")
        digest = sha256_digest(raw)
        if media_type_of(load_json(raw, f"pull {image}: manifest"), ctype) in INDEX_TYPES:
            chosen = select_platform(raw, want, f"pull {image}")
            raw, _ = self._manifest(ref, chosen.digest, image)
            verify_bytes(raw, chosen.digest, f"pull {image}: manifest for {want}")
            digest = chosen.digest
        manifest = parse_manifest(raw, digest, f"pull {image}")
        config_raw = self.blob_bytes(ref, manifest.config, image)
        return resolved(image, digest, raw, config_raw, manifest.layers)

    def blob_bytes(self, ref: Reference, desc: Descriptor, image: str) -> bytes:
        if desc.size > MAX_SMALL_BLOB:
            raise ImageError(f"pull {image}: config blob {desc.digest} is implausibly large ({desc.size} bytes)")
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/blobs/{desc.digest}"
        resp = self._attempt(f"pull {image}", lambda: self._send(ref, url, {}))
        self._check_status(resp, image, f"blob {desc.digest}")
        check_digest(f"pull {image}", desc, sha256_digest(resp.content), len(resp.content))
        return resp.content

    def download_blob(self, ref: Reference, desc: Descriptor, dest: Path, image: str) -> None:
        """Stream one blob into `dest`, verified; retried from scratch on connection errors and 5xx."""
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/blobs/{desc.digest}"

        def once() -> None:
            resp = self._send(ref, url, {}, stream=True)
            try:
                self._check_status(resp, image, f"blob {desc.digest}")
                digest, size = hashlib.sha256(), 0
                with dest.open("wb") as out:
                    for chunk in resp.iter_bytes(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            finally:
                resp.close()
            check_digest(f"pull {image}", desc, "sha256:" + digest.hexdigest(), size)

        self._attempt(f"pull {image}: blob {desc.digest}", once)

    def _manifest(self, ref: Reference, reference: str, image: str) -> tuple[bytes, str]:
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/manifests/{reference}"
        resp = self._attempt(f"pull {image}", lambda: self._send(ref, url, {"Accept": ACCEPT}))
        self._check_status(resp, image, "manifest")
        promised = resp.headers.get("docker-content-digest", "")
        if promised.startswith("sha256:") and promised != sha256_digest(resp.content):
            raise DigestMismatch(
                f"pull {image}: manifest hashes to {sha256_digest(resp.content)}, registry said {promised}"
            )
        return resp.content, resp.headers.get("content-type", "")

    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return fn()
            except (httpx.TransportError, _Retryable) as exc:
                if attempt == self._attempts:
                    raise RegistryUnreachable(
                        f"{what}: {exc or type(exc).__name__} (gave up after {attempt} attempts)"
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    def _send(self, ref: Reference, url: str, headers: dict[str, str], stream: bool = False) -> httpx.Response:
        key = (ref.registry, ref.repository)
        with self._lock:
            auth = self._auth.get(key)
        resp = self._request(url, headers, auth, stream)
        if resp.status_code == 401:
            fresh = self._authorize(ref, resp)
            if fresh is not None:
                resp.close()
                with self._lock:
                    self._auth[key] = fresh
                resp = self._request(url, headers, fresh, stream)
        if resp.status_code in _RETRY_STATUS:
            resp.close()
            raise _Retryable(f"{resp.status_code} {resp.reason_phrase} from {url}")
        return resp

    def _request(self, url: str, headers: dict[str, str], auth: str | None, stream: bool) -> httpx.Response:
        all_headers = dict(headers, Authorization=auth) if auth else headers
        return self._http.send(self._http.build_request("GET", url, headers=all_headers), stream=stream)

    def _authorize(self, ref: Reference, resp: httpx.Response) -> str | None:
        """The Authorization header answering this 401's challenge, or None when we have nothing to offer."""
        challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
        creds = credentials_for(self._creds, ref.registry)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return creds.basic_header() if creds else None
        realm = challenge.params.get("realm", "")
        if not realm:
            return None
        params = {"scope": challenge.params.get("scope") or f"repository:{ref.repository}:pull"}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        token_url = httpx.URL(realm)
        # Never send a password in clear text to a token server that is not itself marked insecure.
        send_creds = creds is not None and (token_url.scheme == "https" or is_insecure(token_url.host, self._insecure))
        headers = {"Authorization": creds.basic_header()} if send_creds and creds else {}
        token_resp = self._http.get(token_url, params=params, headers=headers)
        if token_resp.status_code in (401, 403):
            raise Unauthorized(f"pull {ref}: token server {realm} refused the credentials ({token_resp.status_code})")
        if token_resp.status_code != 200:
            raise RegistryUnreachable(f"pull {ref}: token server {realm} answered {token_resp.status_code}")
        doc = load_json(token_resp.content, f"pull {ref}: token from {realm}")
        token = doc.get("token") or doc.get("access_token")
        return f"Bearer {token}" if token else None

    def _check_status(self, resp: httpx.Response, image: str, what: str) -> None:
        code = resp.status_code
        if code == 200:
            return
        if code == 404:
            raise ImageNotFound(f"pull {image}: {what} unknown (404)")
        if code in (401, 403):
            creds = (
                "with the configured credentials"
                if credentials_for(self._creds, image.split("/")[0])
                else "(no credentials configured)"
            )
            raise Unauthorized(f"pull {image}: {what}: access denied ({code}) {creds}")
        raise ImageError(f"pull {image}: {what}: unexpected HTTP {code} {resp.reason_phrase}")


class RegistrySource:
    """A Source for one registry reference, sharing the store's client."""

    def __init__(self, client: RegistryClient, ref: Reference, want: Platform) -> None:
        self.client, self.ref, self.want = client, ref, want

    def resolve(self) -> Resolved:
        return self.client.resolve(self.ref, self.want)

    def fetch_layer(self, desc: Descriptor, diff_id: str, dest: Path) -> None:
        self.client.download_blob(self.ref, desc, dest, str(self.ref))

    def close(self) -> None:
        pass  # the client outlives one pull
