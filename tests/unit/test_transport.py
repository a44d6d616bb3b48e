"""Unit: `orch scheduler` and `orch node` refuse plaintext and bad credentials at start (cli/transport.py).

Each command here must exit at once with one clear message; none may get as far as
listening or dialling (their etcd endpoint and schedulers do not exist).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import pki
from tests.fixtures.etcd import free_port
from tests.fixtures.processes import run_orch


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init(d)
    pki.issue_for(d, "scheduler", "scheduler", ["127.0.0.1"])
    pki.issue_for(d, "node", "n1", ["127.0.0.1"])
    pki.issue_for(d, "node", "n2", ["127.0.0.1"])
    return d


def tls(d: Path, name: str) -> list[str]:
    return ["--tls-ca", str(d / "ca.crt"), "--tls-cert", str(d / f"{name}.crt"), "--tls-key", str(d / f"{name}.key")]


def etcd_tls(d: Path) -> list[str]:
    e = d / pki.ETCD_DIR
    return [
        "--etcd-ca",
        str(e / "ca.crt"),
        "--etcd-cert",
        str(e / "scheduler.crt"),
        "--etcd-key",
        str(e / "scheduler.key"),
    ]


def refused(*args: str) -> str:
    r = run_orch(*args, timeout=20)
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    return r.stderr


def scheduler(*args: str) -> list[str]:
    return ["scheduler", "--listen", f"127.0.0.1:{free_port()}", "--etcd", "127.0.0.1:1", *args]


def test_plaintext_is_refused_without_insecure(tmp_path: Path) -> None:
    err = refused(*scheduler("--insecure-etcd"))
    assert "!! orch scheduler: no TLS" in err and err.strip().endswith("refusing plaintext without --insecure")
    err = refused("--scheduler", "127.0.0.1:1", "node", "--name", "n1", "--state-dir", str(tmp_path / "n1"))
    assert err.strip().endswith("orch node n1: refusing plaintext without --insecure")
    assert not (tmp_path / "n1").exists()  # refused before doing anything


def test_plaintext_etcd_is_refused_without_insecure_etcd(certs: Path) -> None:
    err = refused(*scheduler(*tls(certs, "scheduler")))
    assert "plaintext etcd at 127.0.0.1:1" in err and err.strip().endswith("without --insecure-etcd")
    err = refused(*scheduler(*tls(certs, "scheduler"), *etcd_tls(certs), "--etcd", "http://127.0.0.1:1"))
    assert "is plaintext http, but etcd TLS files were given" in err
    err = refused(*scheduler("--insecure", "--etcd", "https://127.0.0.1:1"))
    assert "needs a client certificate" in err


def test_credentials_are_checked_at_start(certs: Path, tmp_path: Path) -> None:
    missing = tls(certs, "scheduler")
    missing[5] = str(tmp_path / "gone.key")
    assert f"TLS private key {tmp_path / 'gone.key'}: No such file or directory" in refused(
        *scheduler(*missing, *etcd_tls(certs))
    )
    assert 'is "node:n1", not a certificate of role scheduler' in refused(*scheduler(*tls(certs, "n1")))
    etcd_wrong = etcd_tls(certs)
    etcd_wrong[1] = str(certs / "ca.crt")  # the cluster's CA, not etcd's
    assert "is not signed by the CA" in refused(*scheduler(*tls(certs, "scheduler"), *etcd_wrong))
    node = ["--scheduler", "127.0.0.1:1", "node", "--name", "n1", "--state-dir", str(tmp_path / "n1")]
    assert 'n2.crt is "node:n2", not "node:n1"' in refused(*node, *tls(certs, "n2"))
    # The agent checks in a forked child (orch/tls.py): the same refusals reach its user.
    wrong_key = tls(certs, "n1")
    wrong_key[5] = str(certs / "n2.key")
    assert "n2.key is not the key of certificate" in refused(*node, *wrong_key)
    other = tmp_path / "other"
    pki.init(other)
    foreign_ca = tls(certs, "n1")
    foreign_ca[1] = str(other / "ca.crt")
    assert "n1.crt is not signed by the CA" in refused(*node, *foreign_ca)
