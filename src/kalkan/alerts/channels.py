"""Where alerts go: Telegram (Bot API sendMessage), a webhook (JSON POST, optionally signed) and
e-mail (SMTP). Each `send` is blocking with its own timeout and raises SendError: the dispatcher
runs it in a thread, off the event loop."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

from kalkan import __version__
from kalkan.alerts.messages import Message
from kalkan.alerts.outbox import Batch
from kalkan.config import (
    AlertsConfig,
    Config,
    EmailAlertConfig,
    TelegramAlertConfig,
    WebhookAlertConfig,
    read_secret,
)

USER_AGENT = f"kalkan/{__version__} (alerts)"
# The schema of the webhook's JSON body; bumped on an incompatible change (docs/alerts.md).
WEBHOOK_SCHEMA = 1


class SendError(Exception):
    """One delivery failed; the message says why in one line (never the secret)."""


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float,
          context: ssl.SSLContext | None, shown: str) -> bytes:
    """POST and return the answer's body; SendError naming `shown` (the URL without secrets)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "User-Agent": USER_AGENT, "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=context if url.startswith("https:") else None) as r:
            return bytes(r.read(65536))
    except urllib.error.HTTPError as exc:
        detail = exc.read(2048).decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(detail).get("description", detail))
        raise SendError(f"{shown} answered {exc.code}: {detail.strip()[:200]}") from None
    except urllib.error.URLError as exc:
        raise SendError(f"cannot reach {shown}: {exc.reason}") from None
    except (OSError, TimeoutError) as exc:
        raise SendError(f"{shown}: {exc}") from None


class Telegram:
    """sendMessage to one chat through the Bot API (api_url is configurable for tests)."""

    name = "telegram"

    def __init__(self, config: TelegramAlertConfig, timeout: float,
                 context: ssl.SSLContext) -> None:
        token = read_secret(config.token, config.token_file, config.token_env,
                            "alerts.telegram.token")
        if not token or not config.chat_id:
            raise ValueError("alerts.telegram needs a token and a chat_id")
        self._url = f"{config.api_url.rstrip('/')}/bot{token}/sendMessage"
        self._shown = f"{config.api_url.rstrip('/')}/bot…/sendMessage"
        self.chat_id = config.chat_id
        self.timeout = timeout
        self.context = context

    def send(self, message: Message, _batch: Batch, _site: str) -> None:
        body = json.dumps({"chat_id": self.chat_id, "text": message.text,
                           "disable_web_page_preview": True}).encode()
        answer = _post(self._url, body, {}, self.timeout, self.context, self._shown)
        try:
            ok = json.loads(answer).get("ok") is True
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise SendError(f"{self._shown} did not confirm: {answer[:200]!r}")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """X-Kalkan-Signature: sha256= the HMAC-SHA256 of `timestamp.body` under the shared secret
    (the timestamp is signed so a captured request cannot be replayed later as new)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_body(message: Message, batch: Batch, site: str) -> dict[str, Any]:
    return {
        "schema": WEBHOOK_SCHEMA,
        "site": site,
        "subject": message.subject,
        "text": message.text,
        "unlisted": batch.unlisted,
        "events": [{"kind": e.kind, "at": round(e.at, 3), "facts": e.facts}
                   for e in batch.events],
    }


class Webhook:
    """A JSON POST per message; 2xx is delivered."""

    name = "webhook"

    def __init__(self, config: WebhookAlertConfig, timeout: float,
                 context: ssl.SSLContext) -> None:
        if not config.url:
            raise ValueError("alerts.webhook needs a url")
        self.url = config.url
        # Logs name the receiver, not its path or query: hook URLs often carry a token there.
        parts = urlsplit(config.url)
        self.shown = f"{parts.scheme}://{parts.netloc}/…"
        self.secret = read_secret(config.secret, config.secret_file, config.secret_env,
                                  "alerts.webhook.secret")
        self.timeout = timeout
        self.context = context

    def send(self, message: Message, batch: Batch, site: str) -> None:
        body = json.dumps(webhook_body(message, batch, site), ensure_ascii=False).encode()
        headers = {"X-Kalkan-Event": ",".join(dict.fromkeys(e.kind for e in batch.events))}
        if self.secret:
            stamp = str(int(time.time()))
            headers["X-Kalkan-Timestamp"] = stamp
            headers["X-Kalkan-Signature"] = signature(self.secret, stamp, body)
        _post(self.url, body, headers, self.timeout, self.context, self.shown)


class Email:
    """One e-mail per message through an SMTP server (STARTTLS, implicit TLS or plain)."""

    name = "email"

    def __init__(self, config: EmailAlertConfig, timeout: float,
                 context: ssl.SSLContext) -> None:
        if not config.host or not config.sender or not config.to:
            raise ValueError("alerts.email needs host, sender and to")
        self.config = config
        self.password = read_secret(config.password, config.password_file,
                                    config.password_env, "alerts.email.password")
        self.timeout = timeout
        self.context = context

    def send(self, message: Message, _batch: Batch, _site: str) -> None:
        c = self.config
        assert c.host is not None and c.sender is not None
        mail = EmailMessage()
        mail["From"] = c.sender
        mail["To"] = ", ".join(c.to)
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain=c.sender.rpartition("@")[2] or None)
        mail.set_content(message.text)
        where = f"SMTP {c.host}:{c.port}"
        try:
            smtp: smtplib.SMTP
            if c.security == "tls":
                smtp = smtplib.SMTP_SSL(c.host, c.port, timeout=self.timeout,
                                        context=self.context)
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=self.timeout)
            with smtp:
                if c.security == "starttls":
                    smtp.starttls(context=self.context)
                if c.username:
                    smtp.login(c.username, self.password or "")
                smtp.send_message(mail)
        except smtplib.SMTPException as exc:
            raise SendError(f"{where}: {exc}") from None
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            raise SendError(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None


Channel = Telegram | Webhook | Email


def site_name(config: Config) -> str:
    """The name messages carry: alerts.site_name, else site.name (the readers' pages' name),
    else the ACME certificate's first name, else this machine's host name."""
    if config.alerts.site_name:
        return config.alerts.site_name
    if config.site.name:
        return config.site.name
    if config.tls is not None and config.tls.acme is not None and config.tls.acme.domains:
        return config.tls.acme.domains[0]
    return socket.gethostname()


def channels(config: AlertsConfig) -> list[Channel]:
    """Every configured channel, ready to send; ValueError if one cannot be built (config
    checks say the same, with lines)."""
    context = tls_context(config.ca_bundle)
    made: list[Channel] = []
    if config.telegram is not None:
        made.append(Telegram(config.telegram, config.timeout, context))
    if config.webhook is not None:
        made.append(Webhook(config.webhook, config.timeout, context))
    if config.email is not None:
        made.append(Email(config.email, config.timeout, context))
    return made
