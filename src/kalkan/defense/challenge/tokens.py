"""Signed, stateless tokens: the pass cookie a reader earns and the challenge ticket a page carries.

Both are bound by their HMAC to the client's prefix and a hash of its user agent, which are not
written into the token: a token shown from another prefix or by another browser simply fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from kalkan.defense.challenge.keys import MAC_BYTES, KeyRing

COOKIE_NAME = "kalkan_pass"
COOKIE_KEY = COOKIE_NAME.encode() + b"="
MAX_PASSES = 3          # passes kept in one cookie: one per prefix a reader moves between
_MAX_COOKIE = 400       # longer values are not ours; do not even parse them
_MAC_LEN = len(base64.urlsafe_b64encode(bytes(MAC_BYTES)).rstrip(b"="))

# Domain tags: a signature made for one kind of token never verifies as another kind.
_PASS_TAG = b"kalkan-pass\n"
_TICKET_TAG = b"kalkan-challenge\n"

POW, NOJS = "w", "n"    # how a pass was earned, written into the pass


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def ua_digest(user_agent: str) -> bytes:
    """What a token binds of the user agent: a short hash, so tokens do not carry the UA."""
    return hashlib.sha256(user_agent.encode("utf-8", "surrogateescape")).hexdigest()[:32].encode()


def _binding(prefix: str, ua: bytes, extra: str = "") -> bytes:
    # Fields never contain a newline (prefixes are CIDR text, return URLs are validated ASCII).
    return b"\n".join((b"", prefix.encode("ascii", "replace"), ua,
                       extra.encode("ascii", "replace")))


def _check_mac(keys: KeyRing, kid: str, signed: bytes, mac: str, now: float) -> bool:
    key = keys.find(kid, now)
    if key is None or len(mac) != _MAC_LEN:
        return False
    return hmac.compare_digest(b64(key.mac(signed)), mac)


# -- the pass -----------------------------------------------------------------------------------
class Pass:
    """A verified pass: its id (for decisions about one token), how it was earned, its expiry."""

    __slots__ = ("id", "method", "expires")

    def __init__(self, pid: str, method: str, expires: float) -> None:
        self.id = pid
        self.method = method
        self.expires = expires

    def __repr__(self) -> str:
        return f"Pass({self.id!r}, {self.method!r}, {self.expires})"


def issue_pass(keys: KeyRing, prefix: str, ua: bytes, method: str, now: float,
               ttl: float) -> str:
    """`p1.KID.EXPIRES.METHOD.ID.MAC` (MAC over the fields + prefix + UA hash)."""
    key = keys.current
    body = f"p1.{key.id}.{int(now + ttl)}.{method}.{secrets.token_urlsafe(8)}"
    return f"{body}.{b64(key.mac(_PASS_TAG + body.encode() + _binding(prefix, ua)))}"


def verify_pass(keys: KeyRing, token: str, prefix: str, ua: bytes, now: float) -> Pass | None:
    """The pass if `token` is genuine, unexpired, and bound to this prefix and UA hash."""
    parts = token.split(".")
    if len(parts) != 6 or parts[0] != "p1":
        return None
    _, kid, exp_s, method, pid, mac = parts
    if not exp_s.isdigit() or len(exp_s) > 12 or int(exp_s) <= now:
        return None
    body = token[: -len(mac) - 1].encode()
    if not _check_mac(keys, kid, _PASS_TAG + body + _binding(prefix, ua), mac, now):
        return None
    return Pass(pid, method, float(exp_s))


def pass_expiry(token: str) -> int:
    """The expiry written in a pass, unverified (0 if it does not parse)."""
    parts = token.split(".")
    if len(parts) != 6 or parts[0] != "p1" or not parts[2].isdigit() or len(parts[2]) > 12:
        return 0
    return int(parts[2])


def cookie_value(cookie: bytes | None) -> bytes | None:
    """The value of our cookie in a Cookie header (the first one that looks like ours)."""
    if cookie is None:
        return None
    start = cookie.find(COOKIE_KEY)
    while start >= 0:
        # The name must start the header or follow "; " (not end another cookie's name).
        if start == 0 or cookie[start - 1] in b" ;":
            begin = start + len(COOKIE_KEY)
            end = cookie.find(b";", begin)
            value = (cookie[begin:] if end < 0 else cookie[begin:end]).strip()
            if 0 < len(value) <= _MAX_COOKIE:
                return value
        start = cookie.find(COOKIE_KEY, start + 1)
    return None


def merge_cookie(new_token: str, old_value: bytes | None, now: float) -> str:
    """The cookie value to set: the new pass first, then a few older unexpired ones.

    Passes for other prefixes are kept (unverified: they only ever verify for their own prefix)
    so a reader moving between IPv4 and IPv6, or between home and mobile, is not challenged anew
    at every move.
    """
    tokens = [new_token]
    if old_value:
        try:
            text = old_value.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        for tok in text.split("~"):
            if len(tokens) >= MAX_PASSES:
                break
            if tok not in tokens and pass_expiry(tok) > now:
                tokens.append(tok)
    return "~".join(tokens)


def set_cookie_header(value: str, max_age: int, secure: bool) -> tuple[bytes, bytes]:
    attrs = f"{COOKIE_NAME}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
    if secure:
        attrs += "; Secure"
    return b"Set-Cookie", attrs.encode("ascii")


# -- the challenge ticket -------------------------------------------------------------------------
class Ticket:
    """A verified challenge: difficulty for proof-of-work, not-before for the no-JS wait."""

    __slots__ = ("text", "nonce_id", "expires", "not_before", "difficulty")

    def __init__(self, text: str, nonce_id: str, expires: float, not_before: float,
                 difficulty: int) -> None:
        self.text = text
        self.nonce_id = nonce_id
        self.expires = expires
        self.not_before = not_before
        self.difficulty = difficulty


def issue_ticket(keys: KeyRing, prefix: str, ua: bytes, return_to: str, now: float, ttl: float,
                 delay: float, difficulty: int) -> str:
    """`c1.KID.EXPIRES.NOT_BEFORE.DIFFICULTY.RANDOM.MAC`; the MAC also binds the return URL.

    The ticket is the proof-of-work challenge string itself, and also the no-JS ticket.
    """
    key = keys.current
    body = (f"c1.{key.id}.{int(now + ttl)}.{int(now + delay)}.{difficulty}."
            f"{secrets.token_urlsafe(9)}")
    mac = key.mac(_TICKET_TAG + body.encode() + _binding(prefix, ua, return_to))
    return f"{body}.{b64(mac)}"


class TicketError(Exception):
    """Why a ticket was refused: 'malformed', 'signature' or 'expired'."""


def verify_ticket(keys: KeyRing, text: str, prefix: str, ua: bytes, return_to: str,
                  now: float) -> Ticket:
    """The ticket if genuine and bound to this prefix, UA hash and return URL; else TicketError.

    An expired ticket is reported as expired only after its signature checked out, so the
    caller may treat expiry as an honest reader's slow tab rather than an attack.
    """
    parts = text.split(".")
    if len(parts) != 7 or parts[0] != "c1" or len(text) > 200:
        raise TicketError("malformed")
    _, kid, exp_s, nbf_s, diff_s, rand, mac = parts
    if not (exp_s.isdigit() and nbf_s.isdigit() and diff_s.isdigit()) or len(diff_s) > 2:
        raise TicketError("malformed")
    body = text[: -len(mac) - 1].encode()
    signed = _TICKET_TAG + body + _binding(prefix, ua, return_to)
    if not _check_mac(keys, kid, signed, mac, now):
        raise TicketError("signature")
    if int(exp_s) <= now:
        raise TicketError("expired")
    return Ticket(text, rand, float(exp_s), float(nbf_s), int(diff_s))


class ReplayGuard:
    """Tickets already spent, remembered until they expire (bounded; oldest forgotten first).

    Per edge: with several edges a ticket could be spent once on each, which costs an attacker
    the same work as solving it once per edge.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._spent: dict[str, float] = {}

    def spend(self, ticket: Ticket, now: float) -> bool:
        """Mark the ticket used; False if it already was."""
        spent = self._spent
        if ticket.nonce_id in spent:
            return False
        if len(spent) >= self.limit:
            self._prune(now)
        self._spent[ticket.nonce_id] = ticket.expires
        return True

    def _prune(self, now: float) -> None:
        live = {k: exp for k, exp in self._spent.items() if exp > now}
        if len(live) >= self.limit:
            # Full of live tickets (a flood of solved ones): keep the newer half.
            items = list(live.items())
            live = dict(items[len(items) // 2:])
        self._spent = live

    def __len__(self) -> int:
        return len(self._spent)
