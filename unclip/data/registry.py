"""Fetch npm package tarballs, verify the registry's integrity hash, cache them.

What `npm pack NAME@VERSION` does, in the standard library: read the version's metadata from the
registry, download `dist.tarball`, and check it against `dist.integrity` (a Subresource Integrity
string, `sha512-<base64>`). No Node.js needed; the registry is `$UNCLIP_NPM_REGISTRY`, else
`$npm_config_registry`, else the public one.
"""

import base64
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from unclip.fsutil import atomic_path, write_json_atomic

DEFAULT_REGISTRY = "https://registry.npmjs.org"
TIMEOUT_S = 60


class RegistryError(RuntimeError):
    """The registry could not be reached or answered something unusable."""


class IntegrityError(RuntimeError):
    """A downloaded tarball does not match the registry's integrity hash."""


def registry_url() -> str:
    url = os.environ.get("UNCLIP_NPM_REGISTRY") or os.environ.get("npm_config_registry") or DEFAULT_REGISTRY
    return url.rstrip("/")


def tarball_name(package: str, version: str) -> str:
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def check_integrity(data: bytes, integrity: str) -> None:
    """Raise IntegrityError unless one of the SRI hashes in `integrity` matches `data`."""
    for entry in integrity.split():
        algo, _, digest = entry.partition("-")
        if algo not in ("sha512", "sha384", "sha256", "sha1"):
            continue
        if base64.b64encode(hashlib.new(algo, data).digest()).decode() == digest:
            return
    raise IntegrityError(f"integrity mismatch (expected {integrity[:30]}...)")


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise RegistryError(f"{url}: HTTP {e.code}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise RegistryError(f"cannot reach the npm registry at {registry_url()} ({reason})") from e


def package_dist(package: str, version: str) -> dict:
    """The registry's `dist` record (tarball URL, integrity) for one version."""
    name = urllib.parse.quote(package, safe="@")
    raw = _get(f"{registry_url()}/{name}/{version}")
    try:
        dist = json.loads(raw)["dist"]
        return {"tarball": dist["tarball"], "integrity": dist.get("integrity") or f"sha1-{_hex_to_b64(dist['shasum'])}"}
    except (ValueError, KeyError) as e:
        raise RegistryError(f"{package}@{version}: the registry's metadata has no dist record") from e


def _hex_to_b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


def fetch(package: str, version: str, cache: Path) -> Path:
    """Return the path of the verified tarball, downloading it once.

    A tarball is trusted from the cache only next to its `.integrity.json` record, which is
    written after verification; anything else is downloaded again.
    """
    cache = Path(cache)
    path = cache / tarball_name(package, version)
    record = path.with_suffix(".integrity.json")
    if path.exists() and record.exists():
        meta = json.loads(record.read_text())
        if meta.get("size") == path.stat().st_size:
            return path
    dist = package_dist(package, version)
    data = _get(dist["tarball"])
    try:
        check_integrity(data, dist["integrity"])
    except IntegrityError as e:
        raise IntegrityError(f"{package}@{version}: {e}; the download was discarded") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    write_json_atomic(record, {"package": package, "version": version, "integrity": dist["integrity"], "size": len(data)})
    return path
