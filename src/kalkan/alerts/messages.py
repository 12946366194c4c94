"""The words of an alert in en, ru and ky: one Batch of events → a short subject and text with
the site's name; an attack's start lists who is attacking and why."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kalkan.alerts.events import (
    ATTACK_ENDED,
    ATTACK_STARTED,
    CERT_EXPIRING,
    ORIGIN_DOWN,
    ORIGIN_UP,
    TEST,
    Event,
)
from kalkan.alerts.outbox import Batch

LANGUAGES = ("en", "ru", "ky")

_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        ATTACK_STARTED: "Attack on {site}: threat level {level}. Why: {reason}",
        ATTACK_ENDED: "Attack on {site} is over after {duration}: threat level {level}.",
        ORIGIN_DOWN: "{site}: the origin {origin} is failing; readers get cached pages.",
        ORIGIN_UP: "{site}: the origin is back after {duration}.",
        CERT_EXPIRING: "{site}: the certificate for {names} expires in {days} days ({date}).",
        "cert_expired": "{site}: the certificate for {names} has expired ({date}).",
        TEST: "Test from Kalkan on {site}: alerts reach this channel.",
        "attackers": "Top attackers now:",
        "summary": "{n} events on {site} since the last message:",
        "unlisted": "…and {n} earlier events not listed.",
        "levels": "peace|elevated|attack|severe",
        "units": "s|min|h",
    },
    "ru": {
        ATTACK_STARTED: "Атака на {site}: уровень угрозы {level}. Причина: {reason}",
        ATTACK_ENDED: "Атака на {site} закончилась через {duration}: уровень угрозы {level}.",
        ORIGIN_DOWN: "{site}: сервер-источник {origin} не отвечает; читатели получают страницы "
                     "из кэша.",
        ORIGIN_UP: "{site}: сервер-источник снова работает (простой {duration}).",
        CERT_EXPIRING: "{site}: сертификат для {names} истекает через {days} дн. ({date}).",
        "cert_expired": "{site}: сертификат для {names} истёк ({date}).",
        TEST: "Проверка от Kalkan на {site}: оповещения доходят до этого канала.",
        "attackers": "Главные атакующие сейчас:",
        "summary": "{site}: {n} событий с прошлого сообщения:",
        "unlisted": "…и ещё {n} более ранних событий не показаны.",
        "levels": "спокойно|повышенный|атака|тяжёлая атака",
        "units": "с|мин|ч",
    },
    "ky": {
        ATTACK_STARTED: "{site} сайтына чабуул: коркунуч деңгээли {level}. Себеби: {reason}",
        ATTACK_ENDED: "{site} сайтына чабуул {duration} кийин токтоду: коркунуч деңгээли "
                      "{level}.",
        ORIGIN_DOWN: "{site}: негизги сервер {origin} иштебей жатат; окурмандар кэштеги "
                     "барактарды алышат.",
        ORIGIN_UP: "{site}: негизги сервер кайра иштеп жатат ({duration} иштеген жок).",
        CERT_EXPIRING: "{site}: {names} сертификатынын мөөнөтү {days} күндөн кийин бүтөт "
                       "({date}).",
        "cert_expired": "{site}: {names} сертификатынын мөөнөтү бүттү ({date}).",
        TEST: "Kalkan текшерүүсү, {site}: эскертүүлөр бул каналга жетет.",
        "attackers": "Азыркы негизги чабуулчулар:",
        "summary": "{site}: акыркы билдирүүдөн бери {n} окуя:",
        "unlisted": "…мурунку дагы {n} окуя көрсөтүлгөн жок.",
        "levels": "тынч|жогорулаган|чабуул|катуу чабуул",
        "units": "сек|мүн|саат",
    },
}

# Telegram refuses texts over 4096 characters; a summary stays far below it anyway.
MAX_TEXT = 3500


@dataclass(frozen=True, slots=True)
class Message:
    subject: str    # one line (the e-mail subject)
    text: str       # plain text, a few lines


def _duration(seconds: float, units: list[str]) -> str:
    s, m, h = units
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} {s}"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} {m}"
    return f"{minutes // 60} {h} {minutes % 60} {m}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S %Z", time.localtime(at))


def _line(event: Event, site: str, texts: dict[str, str]) -> str:
    f: dict[str, Any] = event.facts
    levels = texts["levels"].split("|")
    units = texts["units"].split("|")
    level = f.get("level", 0)
    fields = {
        "site": site,
        "level": f"{level} ({levels[level] if 0 <= level < len(levels) else level})",
        "reason": f.get("reason", ""),
        "duration": _duration(float(f.get("duration", 0.0)), units),
        "origin": f.get("origin", ""),
        "names": ", ".join(f.get("names", ())) or f.get("path", ""),
        "days": f"{float(f.get('days_left', 0.0)):.1f}",
        "date": f.get("not_after", ""),
    }
    key = event.kind
    if key == CERT_EXPIRING and float(f.get("days_left", 0.0)) <= 0:
        key = "cert_expired"
    return texts[key].format(**fields)


def _attackers(event: Event, texts: dict[str, str]) -> list[str]:
    rows = event.facts.get("attackers") or []
    if not rows:
        return []
    return [texts["attackers"], *(f"• {row['target']} — {row['why']}" for row in rows)]


def render(batch: Batch, site: str, language: str = "en") -> Message:
    """One message for a batch: a lone event says itself; several are listed with their times,
    oldest first, with the attackers of the latest attack start."""
    texts = _TEXTS.get(language, _TEXTS["en"])
    events = batch.events
    starts = [e for e in events if e.kind == ATTACK_STARTED]
    if len(events) == 1 and not batch.unlisted:
        lines = [_line(events[0], site, texts), *_attackers(events[0], texts)]
        subject = lines[0]
    else:
        n = len(events) + batch.unlisted
        lines = [texts["summary"].format(n=n, site=site)]
        if batch.unlisted:
            lines.append(texts["unlisted"].format(n=batch.unlisted))
        lines.extend(f"{_clock(e.at)}  {_line(e, site, texts)}" for e in events)
        if starts:
            lines.extend(_attackers(starts[-1], texts))
        # The subject says the latest news: what is true now.
        subject = _line(events[-1], site, texts) if events else lines[0]
    text = "\n".join(lines)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1] + "…"
    subject = subject.splitlines()[0]
    return Message("[Kalkan] " + (subject if len(subject) <= 150 else subject[:149] + "…"), text)
