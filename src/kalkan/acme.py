"""Certificates from an ACME CA (RFC 8555, HTTP-01): the account key, ordering and renewal before
expiry, and the one certificate file in STATE_DIR/acme/ the TLS listener loads.

The `acme` library is synchronous (requests, sleeps while polling), so each order runs in a
daemon thread; the event loop keeps serving, the HTTP-01 answers included (`tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from kalkan import __version__
from kalkan.config import AcmeConfig
from kalkan.statefiles import remove_leftovers
from kalkan.tasks import cancel_and_wait

log = logging.getLogger("kalkan.acme")

CERT_FILE = "certificate.pem"   # the certificate's key, then the full chain: one atomic file
ACCOUNT_KEY_FILE = "account.key"
MAX_RETRY = 86400.0             # a failing CA is asked again at least once a day
MAX_SLEEP = 12 * 3600.0         # the renewal time is checked again at least this often
ORDER_DEADLINE = 90.0           # seconds to wait for the CA to validate and issue
_T = TypeVar("_T")


class AcmeError(Exception):
    """An order failed; the message says which domain and why, in one line."""


@dataclass(frozen=True)
class CertInfo:
    """What a stored certificate is: its names, validity and who issued it."""

    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: str
    issuer: str

    def covers(self, domains: list[str]) -> bool:
        return {d.lower().rstrip(".") for d in domains} <= set(self.names)

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def describe_certificate(pem: bytes) -> CertInfo:
    """The leaf (first certificate) of a PEM chain; ValueError if there is none."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(names, cert.not_valid_before_utc, cert.not_valid_after_utc,
                    format(cert.serial_number, "x"), cert.issuer.rfc4514_string())


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600) so that a crash leaves the old file or the new one,
    never a mixture: a temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def verify_pair(pem: bytes, domains: list[str], scratch: Path) -> CertInfo:
    """Check a new key + chain before it replaces the old one: TLS loads it (the key matches
    the leaf), it covers every domain and is valid now. Raises AcmeError saying what is wrong."""
    write_private(scratch, pem)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(scratch))
        except (ssl.SSLError, OSError) as exc:
            raise AcmeError(f"the issued certificate does not load with its key: {exc}") from None
    finally:
        scratch.unlink(missing_ok=True)
    try:
        info = describe_certificate(pem)
    except ValueError as exc:
        raise AcmeError(f"the CA sent no readable certificate: {exc}") from None
    if not info.covers(domains):
        missing = sorted(set(domains) - set(info.names))
        raise AcmeError(f"the issued certificate lacks {', '.join(missing)}")
    now = _now()
    if not info.not_before <= now + datetime.timedelta(minutes=5) or info.not_after <= now:
        raise AcmeError(f"the issued certificate is not valid now ({info.not_before} to "
                        f"{info.not_after})")
    return info


class AcmeManager:
    """Keeps one certificate for `config.domains` in STATE_DIR/acme/: issues it when there is
    none usable, renews it `renew_before_days` before expiry, calls `on_certificate` (on the
    event loop) after each new one is in place. The old file stays until the new one is
    verified."""

    def __init__(self, config: AcmeConfig, state_dir: str | Path,
                 on_certificate: Callable[[], Awaitable[None]], *, alone: bool = True) -> None:
        self.config = config
        self.dir = Path(state_dir) / "acme"
        self.cert_path = self.dir / CERT_FILE
        self.on_certificate = on_certificate
        self.alone = alone  # no certificate of the operator's own: HTTPS waits for this one
        self.domains = [d.lower().rstrip(".") for d in config.domains]
        # HTTP-01 token → key authorization, written by the order's thread, read by the
        # plain-HTTP listener (one dict operation each: safe under the GIL).
        self.tokens: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    # -- what is stored -------------------------------------------------------------------------
    @property
    def pair(self) -> dict[str, str]:
        """The stored certificate as a tls.certificates entry (key and chain in one file)."""
        return {"cert": str(self.cert_path), "key": str(self.cert_path)}

    def stored(self) -> CertInfo | None:
        """The stored certificate, or None if there is none or it cannot be read."""
        try:
            pem = self.cert_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read %s: %s", self.cert_path, exc.strerror or exc)
            return None
        try:
            return describe_certificate(pem)
        except ValueError as exc:
            log.error("%s is damaged (%s); a new certificate will be ordered", self.cert_path,
                      exc)
            return None

    def usable(self) -> CertInfo | None:
        """The stored certificate if it can serve now: readable, not expired (it may be due for
        renewal, or lack a newly added domain: it serves until its successor is in place)."""
        info = self.stored()
        if info is None or info.not_after <= _now():
            return None
        return info

    def renew_at(self, info: CertInfo | None) -> datetime.datetime:
        """When the certificate should be replaced: now if it is missing or lacks a domain."""
        if info is None or not info.covers(self.domains):
            return _now()
        try:
            return info.not_after - datetime.timedelta(days=self.config.renew_before_days)
        except OverflowError:  # before year 1: due, like any window longer than the lifetime
            return _now()

    # -- the renewal loop -----------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)  # the keys inside are 0600 too; this hides their names
        except OSError as exc:  # each order will fail saying so; the edge still serves HTTP
            log.error("ACME: cannot use %s: %s", self.dir, exc.strerror or exc)
        remove_leftovers(self.dir, ".*.tmp")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="acme")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self._renewals()
            except Exception:  # a bug must not end renewals for the life of the process
                log.exception("ACME: the renewal loop failed; restarting it in %s",
                              _span(self.config.retry_interval))
                await asyncio.sleep(self.config.retry_interval)

    async def _renewals(self) -> None:
        retry = delay = self.config.retry_interval
        last_order: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            info = self.usable()
            wait = (self.renew_at(info) - _now()).total_seconds()
            if last_order is not None:  # never order again sooner than retry_interval
                wait = max(wait, last_order + delay - loop.time())
            if wait > 0:
                if info is not None:
                    log.info("certificate for %s valid until %s; next renewal check in %s",
                             ", ".join(info.names), info.not_after.isoformat(timespec="seconds"),
                             _span(min(wait, MAX_SLEEP)))
                await asyncio.sleep(min(wait, MAX_SLEEP))
                continue
            last_order = loop.time()
            try:
                new = await _in_thread(self.order)
            except Exception as exc:  # an AcmeError says why; anything else is a bug, said too
                if not isinstance(exc, AcmeError):
                    log.error("ACME: unexpected failure of the order", exc_info=exc)
                keeping = ("keeping the current certificate" if info else
                           "HTTPS stays off" if self.alone else "serving the other certificates")
                log.error("ACME: %s; %s, next try in %s", exc, keeping, _span(retry))
                last_order, delay = loop.time(), retry
                retry = min(retry * 2, max(MAX_RETRY, self.config.retry_interval))
                continue
            retry = delay = self.config.retry_interval
            log.info("ACME: new certificate for %s (serial %s) valid until %s", ", ".join(
                new.names), new.serial, new.not_after.isoformat(timespec="seconds"))
            try:
                await self.on_certificate()
            except Exception:  # the renewal loop must outlive a failed swap
                log.exception("ACME: the new certificate could not be put in use")

    # -- one order (in a thread) ----------------------------------------------------------------
    def order(self) -> CertInfo:
        """Account, order, HTTP-01 for every domain, finalize, verify, store. Blocking."""
        directory = self.config.directory
        assert directory is not None
        try:
            return self._order(directory)
        except AcmeError:
            raise
        except requests.exceptions.RequestException as exc:
            raise AcmeError(f"cannot reach the CA at {directory}: {_reason(exc)}") from None
        except errors.ValidationError as exc:
            raise AcmeError(_validation_failures(exc)) from None
        except errors.TimeoutError:
            raise AcmeError(f"the CA did not validate and issue within {ORDER_DEADLINE:g} s "
                            f"for {', '.join(self.domains)}") from None
        except messages.Error as exc:
            raise AcmeError(f"the CA refused the order for {', '.join(self.domains)}: "
                            f"{_problem(exc)}") from None
        except (errors.Error, ValueError, OSError) as exc:
            raise AcmeError(f"order for {', '.join(self.domains)} failed: {exc}") from None

    def _order(self, directory: str) -> CertInfo:
        account_key = self._account_key()
        net = client.ClientNetwork(account_key, user_agent=f"kalkan/{__version__}", timeout=30)
        if self.config.ca_bundle:  # requests takes a CA file where acme's annotation says bool
            net.verify_ssl = cast(bool, self.config.ca_bundle)
        acme = client.ClientV2(client.ClientV2.get_directory(directory, net), net)
        registration = messages.NewRegistration.from_data(
            email=self.config.email, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:  # the key's account exists: use it
            net.account = messages.RegistrationResource(uri=exc.location,
                                                        body=messages.Registration())
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, self.domains))
        answered: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated recently for this account: nothing to prove
                name = authz.body.identifier.value
                challenge = next((c for c in authz.body.challenges
                                  if isinstance(c.chall, challenges.HTTP01)), None)
                if challenge is None:
                    raise AcmeError(f"{name}: the CA offers no HTTP-01 challenge")
                response, validation = challenge.response_and_validation(account_key)
                token = challenge.chall.encode("token")
                self.tokens[token] = validation
                answered.append(token)
                log.info("ACME: answering the HTTP-01 challenge for %s", name)
                acme.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in answered:
                self.tokens.pop(token, None)
        if not order.fullchain_pem:
            raise AcmeError(f"the CA issued no certificate for {', '.join(self.domains)}")
        pem = key_pem + order.fullchain_pem.encode("ascii")
        info = verify_pair(pem, self.domains, self.dir / ".verify.pem.tmp")
        write_private(self.cert_path, pem)
        return info

    def _account_key(self) -> JWKRSA:
        """The account key in STATE_DIR/acme/account.key, made on first use (0600)."""
        path = self.dir / ACCOUNT_KEY_FILE
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            loaded = None
        except ValueError:
            damaged = path.with_name(path.name + ".damaged")
            os.replace(path, damaged)
            log.error("ACME account key %s is damaged; moved to %s, registering a new account",
                      path, damaged)
            loaded = None
        if isinstance(loaded, rsa.RSAPrivateKey):
            return JWKRSA(key=loaded)
        if loaded is not None:
            raise AcmeError(f"{path}: the account key must be RSA")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        log.info("ACME: new account key in %s", path)
        return JWKRSA(key=key)


def status(config: AcmeConfig, state_dir: str | Path) -> tuple[bool, list[str]]:
    """`kalkan cert status`: the stored certificate in lines, and whether it serves every
    configured name now (false: missing, unreadable, expired or lacking a name)."""
    async def nothing() -> None:
        return None

    manager = AcmeManager(config, state_dir, nothing)
    info = manager.stored()
    if info is None:
        return False, [f"{manager.cert_path}: no certificate yet (the edge orders one when it "
                       "starts)"]
    now = _now()
    renew = manager.renew_at(info)
    lines = [f"certificate: {manager.cert_path}",
             f"names:       {', '.join(info.names)}",
             f"issuer:      {info.issuer}",
             f"serial:      {info.serial}",
             f"valid:       {info.not_before:%Y-%m-%d %H:%M} to {info.not_after:%Y-%m-%d %H:%M} "
             f"UTC ({info.days_left(now):.1f} days left)",
             f"renewal:     {'due now' if renew <= now else f'{renew:%Y-%m-%d %H:%M} UTC'} "
             f"(renew_before_days {config.renew_before_days:g})"]
    missing = sorted(set(manager.domains) - set(info.names))
    if missing:
        lines.append(f"missing:     {', '.join(missing)} (configured, not yet in the "
                     "certificate)")
    if info.not_after <= now:
        lines.append("EXPIRED: HTTPS does not start with it")
    return info.not_after > now and not missing, lines


async def _in_thread(fn: Callable[[], _T]) -> _T:
    """Run `fn` in a daemon thread: an order stuck on the network never holds up the exit the
    way the default executor's joined threads would."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def body() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=body, name="acme-order", daemon=True).start()
    return await future


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"


def _problem(error: messages.Error) -> str:
    detail = error.detail or error.description or ""
    return f"{error.code or error.typ}: {detail}".strip()


def _reason(exc: requests.exceptions.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return ("its HTTPS certificate is not trusted (set tls.acme.ca_bundle for a private "
                f"CA): {exc}")
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed (is the directory URL right and the CA reachable from here?)"
    return str(exc)


def _validation_failures(exc: errors.ValidationError) -> str:
    """`news.example: the CA could not fetch the challenge: <why>` for each failed domain."""
    parts = []
    for authz in exc.failed_authzrs:
        name = authz.body.identifier.value
        why = "; ".join(_problem(c.error) for c in authz.body.challenges if c.error is not None)
        parts.append(f"{name}: HTTP-01 validation failed: {why or 'no reason given'} (does "
                     f"http://{name}/.well-known/acme-challenge/ reach this edge's "
                     "tls.http_listen on port 80?)")
    return "; ".join(parts) or "HTTP-01 validation failed"
