"""tls.acme's config checks, and what kalkan.acme does with certificates before it keeps one:
the new pair is verified (key matches, names covered, valid now) and written 0600 atomically;
renewal falls due `renew_before_days` before expiry, or at once for a missing name."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme

from kalkan.acme import AcmeError, AcmeManager, CertInfo, verify_pair, write_private
from kalkan.config import AcmeConfig, ConfigError, load_config_text

BASE = """\
listen: ["0.0.0.0:443"]
tls:
  http_listen: 0.0.0.0:80
  acme:
    directory: https://acme.example/directory
    domains: [news.example, www.news.example]
"""


def test_a_valid_acme_section_needs_no_certificates() -> None:
    config = load_config_text(BASE + "    renew_before_days: 20\n    retry_interval: 5m\n")
    assert config.tls is not None and config.tls.acme is not None
    assert config.tls.certificates == []
    assert config.tls.acme.domains == ["news.example", "www.news.example"]
    assert config.tls.acme.retry_interval == 300.0


@pytest.mark.parametrize(("text", "needle"), [
    (BASE.replace("    directory: https://acme.example/directory\n", ""),
     "tls.acme.directory: the CA's ACME directory URL is needed"),
    (BASE.replace("https://acme.example", "http://acme.example"),
     "site.yaml:5: tls.acme.directory: expected an https:// URL"),
    (BASE.replace("[news.example, www.news.example]", "[]"),
     "site.yaml:6: tls.acme.domains: at least one name is needed"),
    (BASE.replace("www.news.example", "'*.news.example'"),
     "tls.acme.domains[1]: '*.news.example': HTTP-01 cannot prove a wildcard"),
    (BASE.replace("www.news.example", "203.0.113.7"),
     "tls.acme.domains[1]: '203.0.113.7' is not a DNS name"),
    (BASE.replace("www.news.example", "news_example"),
     "tls.acme.domains[1]: 'news_example' is not a DNS name"),
    (BASE.replace("  http_listen: 0.0.0.0:80\n", ""),
     "tls.http_listen: needed with tls.acme"),
    (BASE + "    email: nobody\n", "tls.acme.email: expected an address"),
    (BASE + "    renew_before_days: 0\n", "tls.acme.renew_before_days: must be more than 0"),
    (BASE + "    ca_bundle: /nonexistent/ca.pem\n",
     "tls.acme.ca_bundle: /nonexistent/ca.pem: no such file"),
    (BASE + "    retries: 3\n", "unknown key tls.acme.retries"),
    ("tls:\n  http_listen: 0.0.0.0:80\n",
     "tls.certificates: at least one {cert, key} is needed (or tls.acme)"),
])
def test_acme_config_errors_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "site.yaml")
    assert needle in str(err.value)


def pem_of(ca: trustme.CA, *names: str) -> bytes:
    leaf = ca.issue_cert(*names)
    return leaf.private_key_pem.bytes() + b"".join(p.bytes() for p in leaf.cert_chain_pems)


def test_a_good_pair_is_verified(tmp_path: Path) -> None:
    info = verify_pair(pem_of(trustme.CA(), "news.example", "www.news.example"),
                       ["news.example", "www.news.example"], tmp_path / ".scratch")
    assert info.names == ("news.example", "www.news.example")
    assert not (tmp_path / ".scratch").exists()


def test_a_pair_missing_a_name_or_its_key_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    with pytest.raises(AcmeError, match=r"lacks www\.news\.example"):
        verify_pair(pem_of(ca, "news.example"), ["news.example", "www.news.example"],
                    tmp_path / ".scratch")
    other_key = ca.issue_cert("news.example").private_key_pem.bytes()
    leaf = ca.issue_cert("news.example")
    mismatched = other_key + b"".join(p.bytes() for p in leaf.cert_chain_pems)
    with pytest.raises(AcmeError, match="does not load with its key"):
        verify_pair(mismatched, ["news.example"], tmp_path / ".scratch")


def test_write_private_is_0600_and_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "certificate.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certificate.pem"]


def test_renewal_falls_due_before_expiry_or_at_once_for_a_new_name(tmp_path: Path) -> None:
    async def nothing() -> None:
        return None

    manager = AcmeManager(AcmeConfig(directory="https://acme.example/dir",
                                     domains=["News.Example."], renew_before_days=30),
                          tmp_path, nothing)
    now = datetime.datetime.now(datetime.UTC)
    expires = now + datetime.timedelta(days=90)
    info = CertInfo(("news.example",), now, expires, "1", "CN=test")
    assert manager.renew_at(info) == expires - datetime.timedelta(days=30)
    assert manager.renew_at(None) <= datetime.datetime.now(datetime.UTC)
    manager.config.renew_before_days = 10**6  # longer than the calendar: due, no overflow
    assert manager.renew_at(info) <= datetime.datetime.now(datetime.UTC)
    manager.config.renew_before_days = 30
    manager.domains.append("www.news.example")  # a name added to the config
    assert manager.renew_at(info) <= datetime.datetime.now(datetime.UTC)
    # Nothing stored yet: nothing usable, so HTTPS waits for the first certificate.
    assert manager.stored() is None and manager.usable() is None
