import base64
import hashlib

import pytest

from unclip.data import registry as reg


def test_check_integrity_accepts_matching_and_rejects_other_bytes():
    data = b"emoji tarball"
    sri = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    reg.check_integrity(data, sri)
    with pytest.raises(reg.IntegrityError):
        reg.check_integrity(data + b"!", sri)
    with pytest.raises(reg.IntegrityError):
        reg.check_integrity(data, "md5-AAAA")  # no hash we can check is not a pass


def test_fetch_verifies_and_caches(registry, tmp_path):
    path = reg.fetch("fluentui-emoji", "1.3.0", tmp_path)
    assert path.read_bytes() == registry.tarballs["fluentui-emoji"]
    hits = len(registry.hits)
    assert reg.fetch("fluentui-emoji", "1.3.0", tmp_path) == path
    assert len(registry.hits) == hits, "a verified tarball in the cache must not be downloaded again"


def test_fetch_rejects_a_tarball_that_fails_its_integrity_hash(registry, tmp_path):
    registry.corrupt.add("openmoji")
    with pytest.raises(reg.IntegrityError, match="openmoji@17.0.0: integrity mismatch"):
        reg.fetch("openmoji", "17.0.0", tmp_path)
    assert not list(tmp_path.iterdir()), "nothing may be cached from a failed verification"


def test_unknown_package_and_unreachable_registry_give_clear_errors(registry, tmp_path, monkeypatch):
    with pytest.raises(reg.RegistryError, match="HTTP 404"):
        reg.fetch("no-such-package", "1.0.0", tmp_path)
    monkeypatch.setenv("UNCLIP_NPM_REGISTRY", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(reg.RegistryError, match="cannot reach the npm registry at http://127.0.0.1:9"):
        reg.fetch("openmoji", "17.0.0", tmp_path)
