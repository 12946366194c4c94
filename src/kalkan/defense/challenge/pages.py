"""The challenge page and the small pages around it, in Kyrgyz, Russian and English.

Everything a page needs is inline (style, script, the worker's source): no fonts, images or
scripts from anywhere. Templates are split once per language into byte pieces, so rendering a
page on the refusal path is a join, not a template walk.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from urllib.parse import quote, urlsplit

from kalkan.defense.challenge.pow import WORKER_JS
from kalkan.defense.facts import CHALLENGE_PREFIX

LANGUAGES = ("ky", "ru", "en")
DEFAULT_LANGUAGE = "en"

TEXTS: dict[str, dict[str, str]] = {
    "ky": {
        "title": "Браузериңиз текшерилүүдө",
        "lead": "Бул сайт чабуулдардан корголгон. Сиз бот эмес, окурман экениңизди көрсөтүү үчүн"
                " браузериңиз кыска эсептөө жүргүзүүдө. Бул бир нече секундга созулат, андан"
                " кийин керектүү барак ачылат.",
        "progress_label": "Текшерүүнүн жүрүшү",
        "starting": "Башталууда…",
        "progress": "Текшерилүүдө… {p}%",
        "done": "Даяр. Барак ачылууда…",
        "continue": "Улантуу",
        "cookies": "Бул сайт үчүн cookie файлдарына уруксат бериңиз: текшерүү браузериңизде бир"
                   " cookie калтырат.",
        "nojs": "JavaScript өчүрүлгөн. {s} секунд күтө туруңуз — барак өзү ачылат. Ачылбаса,"
                " «Улантуу» баскычын басыңыз.",
        "trouble": "Иштебей жатабы? JavaScript'сиз улантуу",
        "why": "Текшерүүдөн кийин браузериңизде андан өткөнүңүздү тастыктаган бир cookie"
               " сакталат; анда сиз тууралуу эч кандай маалымат жок. Бул барактагы эч нерсе башка"
               " сайттардан жүктөлбөйт.",
        "fail_title": "Текшерүүдөн өтпөй калды",
        "fail_text": "Браузериңиздин жообу кабыл алынган жок: текшерүү өтө көп убакыт алгандыр же"
                     " туташууңуз өзгөргөндүр. Кайра аракет кылыңыз.",
        "retry": "Кайра аракет кылуу",
        "wait_title": "Бир аз күтө туруңуз",
        "wait_text": "Дагы {s} секунд күтүп, «Улантуу» баскычын басыңыз. Барак өзү да ачылат.",
        "limited_title": "Аракеттер өтө көп",
        "limited_text": "Сиздин тармактан өтө көп текшерүү келди. Бир нече мүнөттөн кийин кайра"
                        " аракет кылыңыз.",
        "notfound_title": "Табылган жок",
        "notfound_text": "Бул дарек сайттын коргоосуна тиешелүү, бул жерде көрсөтө турган эч"
                         " нерсе жок.",
        "redirect": "Баракка өтүү",
    },
    "ru": {
        "title": "Проверка браузера",
        "lead": "Сайт защищён от атак. Ваш браузер выполняет короткое вычисление, чтобы показать,"
                " что им пользуется читатель, а не бот. Это займёт несколько секунд, затем"
                " откроется нужная страница.",
        "progress_label": "Ход проверки",
        "starting": "Начинаем…",
        "progress": "Проверка… {p}%",
        "done": "Готово. Открываем страницу…",
        "continue": "Продолжить",
        "cookies": "Разрешите cookie для этого сайта: проверка сохраняет в браузере один"
                   " cookie-файл.",
        "nojs": "JavaScript отключён. Подождите {s} с — страница откроется сама. Если этого не"
                " произошло, нажмите «Продолжить».",
        "trouble": "Не работает? Продолжить без JavaScript",
        "why": "После проверки браузер хранит один cookie-файл, подтверждающий её прохождение;"
               " сведений о вас в нём нет. Ничего на этой странице не загружается с других"
               " сайтов.",
        "fail_title": "Проверка не пройдена",
        "fail_text": "Ответ браузера не удалось принять: возможно, проверка заняла слишком много"
                     " времени или изменилось подключение. Попробуйте ещё раз.",
        "retry": "Попробовать снова",
        "wait_title": "Ещё немного",
        "wait_text": "Подождите ещё {s} с и нажмите «Продолжить». Страница также откроется сама.",
        "limited_title": "Слишком много попыток",
        "limited_text": "Из вашей сети пришло слишком много проверок. Попробуйте снова через"
                        " несколько минут.",
        "notfound_title": "Не найдено",
        "notfound_text": "Этот адрес относится к защите сайта, здесь нечего показать.",
        "redirect": "Перейти на страницу",
    },
    "en": {
        "title": "Checking your browser",
        "lead": "This site is protected from attacks. Your browser is doing a short calculation"
                " to show that a reader is using it, not a bot. It takes a few seconds, then"
                " your page opens.",
        "progress_label": "Progress of the check",
        "starting": "Starting…",
        "progress": "Checking… {p}%",
        "done": "Done. Opening the page…",
        "continue": "Continue",
        "cookies": "Please allow cookies for this site: the check leaves one cookie in your"
                   " browser.",
        "nojs": "JavaScript is off. Wait {s} seconds and the page opens by itself. If it does"
                " not, press “Continue”.",
        "trouble": "Not working? Continue without JavaScript",
        "why": "After the check your browser keeps one cookie saying that it passed; it holds"
               " nothing about you. Nothing on this page is loaded from other sites.",
        "fail_title": "The check did not succeed",
        "fail_text": "Your browser's answer could not be accepted: the check may have taken too"
                     " long, or your connection changed. Please try again.",
        "retry": "Try again",
        "wait_title": "Just a moment",
        "wait_text": "Please wait {s} more seconds, then press “Continue”. The page also opens"
                     " by itself.",
        "limited_title": "Too many attempts",
        "limited_text": "Too many checks came from your network. Please try again in a few"
                        " minutes.",
        "notfound_title": "Not found",
        "notfound_text": "This address belongs to the site's protection and has nothing to show.",
        "redirect": "Continue to the page",
    },
}

# -- language -----------------------------------------------------------------------------------
_ALIASES = {"ky": "ky", "kir": "ky", "ru": "ru", "rus": "ru", "en": "en", "eng": "en"}
_lang_memo: dict[bytes, str] = {}


def choose_language(accept_language: bytes | str | None) -> str:
    """The best of ky/ru/en for an Accept-Language value (q-values honoured; default English)."""
    if not accept_language:
        return DEFAULT_LANGUAGE
    raw = accept_language.encode("latin-1") if isinstance(accept_language, str) else accept_language
    lang = _lang_memo.get(raw)
    if lang is None:
        lang = _parse_accept_language(raw.decode("latin-1")[:512])
        if len(_lang_memo) >= 1024:
            _lang_memo.clear()  # a flood of odd headers must not grow it
        _lang_memo[raw] = lang
    return lang


def _parse_accept_language(value: str) -> str:
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for item in value.split(",")[:32]:
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        q = 1.0
        for param in params.split(";"):
            name, _, val = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        lang = _ALIASES.get(primary)
        if lang is not None and q > best_q:  # ties: the earlier entry wins
            best, best_q = lang, q
    return best


# -- return URLs --------------------------------------------------------------------------------
# A same-site path: one "/", then only characters that need no escaping in a URL; no "//" or
# "/\" start (a browser reads those as another host), no fragment, no spaces or controls.
_SAFE_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*\Z")
_PATH_CHARS = "-._~!$&'()*+,;=:@/?%"
MAX_RETURN = 2048


def safe_return(url: str) -> str | None:
    """`url` if it is a same-site path we would redirect to, else None (never an open redirect)."""
    if len(url) > MAX_RETURN or not _SAFE_PATH.match(url) or url.startswith(CHALLENGE_PREFIX):
        return None
    return url


def normalize_return(path: str, query: str = "") -> str:
    """The request's own path as a safe return URL ("/" if it cannot be one)."""
    url = path + ("?" + query if query else "")
    # Raw non-ASCII or stray characters become %XX (latin-1 is how the edge decoded the bytes).
    url = quote(url.encode("latin-1", "replace"), safe=_PATH_CHARS)
    return safe_return(url) or "/"


def return_url_for(method: str, path: str, query: str, host: str, referer: bytes | None) -> str:
    """Where to send a reader after a challenge on this request.

    A GET comes back to itself. A POST body is not kept (the pass cookie is what the challenge
    gives), so a POST returns to the page that held the form, when that page is on this site:
    the reader sees the form again, now with a pass, instead of losing it silently.
    """
    if method in ("GET", "HEAD"):
        return normalize_return(path, query)
    if referer:
        try:
            ref = urlsplit(referer.decode("latin-1"))
        except ValueError:
            return "/"
        if ref.scheme in ("http", "https") and ref.netloc.lower() == host.lower():
            return normalize_return(ref.path or "/", ref.query)
    return "/"


# -- style, script, security headers ------------------------------------------------------------
# Colours checked for WCAG AA (>= 4.5:1 for text) in tests/unit/test_challenge_pages.py.
FG, BG, ACCENT, MUTED, FOCUS = "#1b1b1b", "#ffffff", "#1a4d8f", "#4a4a4a", "#b34700"
DARK_FG, DARK_BG, DARK_ACCENT, DARK_MUTED = "#eeeeee", "#121212", "#8ab4f8", "#bbbbbb"

CSS = (
    f"body{{margin:0;font:1.05em/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    f"color:{FG};background:{BG}}}"
    "main{max-width:34em;margin:0 auto;padding:1.5em 1em}h1{font-size:1.5em;margin:0 0 .6em}"
    "progress{display:block;width:100%;height:1.2em;margin:.3em 0}"
    f"button,.b{{font:inherit;padding:.5em 1.2em;border:0;border-radius:.3em;background:{ACCENT};"
    "color:#fff;cursor:pointer;text-decoration:none;display:inline-block}"
    "button:disabled{background:#6b6b6b;cursor:default}"
    f"a{{color:{ACCENT}}}.n{{font-size:.9em;color:{MUTED}}}"
    f"a:focus,button:focus{{outline:3px solid {FOCUS};outline-offset:2px}}"
    f"@media(prefers-color-scheme:dark){{body{{color:{DARK_FG};background:{DARK_BG}}}"
    f"a{{color:{DARK_ACCENT}}}.n{{color:{DARK_MUTED}}}}}"
)

# The page's own script (static: dynamic values and texts come from data-* attributes, so a CSP
# hash can pin it). It builds the progress bar, status line and continue button, then starts
# WORKER_JS in up to 4 Web Workers from a Blob, each trying every k-th nonce, and falls back to
# slices on the main thread when workers are unavailable. Progress is the chance the answer has
# been found by now, 1 - exp(-tried / 2**D): it moves steadily and never stalls at 99%.
PAGE_JS = (
    "(function(){var W=" + WORKER_JS + ";\n"
    "var d=document;function $(i){return d.getElementById(i)}"
    "var m=$('kalkan'),D=m.dataset,c=D.c,k=+D.d,r=D.r,E=Math.pow(2,k),ui=$('kalkan-js');"
    # The JS-only controls are made here, so text browsers and JS-off readers never see them.
    "ui.innerHTML='<label for=\"kalkan-progress\"></label>"
    "<progress id=\"kalkan-progress\" max=\"100\" value=\"0\"></progress>"
    "<p id=\"kalkan-status\" role=\"status\" aria-live=\"polite\"></p>"
    "<form id=\"kalkan-form\" action=\"/.kalkan/pow\" method=\"get\">"
    "<input type=\"hidden\" name=\"c\"><input type=\"hidden\" name=\"n\" id=\"kalkan-nonce\">"
    "<input type=\"hidden\" name=\"r\">"
    "<button id=\"kalkan-continue\" type=\"submit\" disabled></button></form>"
    "<p class=\"n\"><a id=\"kalkan-nojs-link\"></a></p>';"
    "var bar=$('kalkan-progress'),st=$('kalkan-status'),f=$('kalkan-form'),F=f.elements,"
    "btn=$('kalkan-continue'),a=$('kalkan-nojs-link'),ws=[],tried=0,last=-1,over=0,fell=0;"
    "ui.firstChild.textContent=D.label;st.textContent=D.starting;btn.textContent=D.go;"
    "a.textContent=D.trouble;a.href='/.kalkan/nojs?t='+c+'&r='+encodeURIComponent(r);"
    "F.c.value=c;F.r.value=r;"
    "function say(t){st.textContent=t}"
    "function show(){var p=Math.floor(100*(1-Math.exp(-tried/E))),s=Math.floor(p/20);"
    "bar.value=p;if(s!==last){last=s;say(D.progress.replace('{p}',p))}}"
    "function stop(){for(var i=0;i<ws.length;i++)ws[i].terminate();ws=[]}"
    "function done(n){if(over)return;over=1;stop();bar.value=100;say(D.done);"
    "F.n.value=n;btn.disabled=false;"
    "location.replace('/.kalkan/pow?c='+encodeURIComponent(c)+'&n='+n+"
    "'&r='+encodeURIComponent(r))}"
    "function local(){if(over||fell)return;fell=1;stop();var o={},n=0;W(o);"
    "(function run(){if(over)return;var s=o.search(c,k,n,1,4096);if(s!==null)return done(s);"
    "n+=4096;tried+=4096;show();setTimeout(run,0)})()}"
    "function msg(e){if(e.data.n!=null)done(e.data.n);else{tried+=e.data.t;show()}}"
    "if(!navigator.cookieEnabled){say(D.cookies);return}"
    "try{var u=URL.createObjectURL(new Blob(['('+W+')(self)'],{type:'text/javascript'})),"
    "j=Math.min(4,Math.max(1,(navigator.hardwareConcurrency||2)-1)),i,w;"
    "for(i=0;i<j;i++){w=new Worker(u);w.onmessage=msg;"
    "w.onerror=function(e){if(e.preventDefault)e.preventDefault();local()};"
    "w.postMessage({c:c,d:k,n:i,s:j});ws.push(w)}}catch(x){local()}"
    "show()})();"
)


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# Only the inline style and script above may run; workers only from blob: URLs (the script's
# own); nothing is fetched from anywhere, forms post only to this site.
CSP = (
    f"default-src 'none'; script-src {_csp_hash(PAGE_JS)}; style-src {_csp_hash(CSS)}; "
    "worker-src blob:; child-src blob:; img-src 'none'; connect-src 'none'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
).encode("ascii")

# -- templates ----------------------------------------------------------------------------------
# Fields in {braces}: static texts are filled per language at import; the ones listed in
# _DYNAMIC are left as markers and filled per request (all already HTML-safe when filled).
_HEAD = (
    '<!doctype html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
    '<meta name="robots" content="noindex,nofollow">\n<title>{page_title}</title>\n'
)

CHALLENGE_TEMPLATE = _HEAD + (
    '<noscript><meta http-equiv="refresh" content="{delay};url={nojs_url}"></noscript>\n'
    "<style>{css}</style>\n</head>\n<body>\n"
    '<main id="kalkan" data-c="{ticket}" data-d="{difficulty}" data-r="{ret}"'
    ' data-label="{progress_label}" data-starting="{starting}" data-progress="{progress}"'
    ' data-done="{done}" data-cookies="{cookies}" data-go="{continue}" data-trouble="{trouble}">\n'
    "<h1>{title}</h1>\n<p>{lead}</p>\n"
    '<div id="kalkan-js"></div>\n'
    "<noscript>\n<p>{nojs}</p>\n"
    '<form id="kalkan-nojs" action="/.kalkan/nojs" method="get">'
    '<input type="hidden" name="t" value="{ticket}"><input type="hidden" name="r" value="{ret}">\n'
    '<button id="kalkan-nojs-continue" type="submit">{continue}</button></form>\n'
    "</noscript>\n"
    '<p class="n">{why}</p>\n</main>\n<script>{js}</script>\n</body>\n</html>\n'
)

# The no-JS "wait a little longer" page: the same ticket, refreshed when it becomes valid.
WAIT_TEMPLATE = _HEAD + (
    '<meta http-equiv="refresh" content="{wait};url={nojs_url}">\n'
    "<style>{css}</style>\n</head>\n<body>\n"
    '<main id="kalkan">\n<h1>{wait_title}</h1>\n<p>{wait_text}</p>\n'
    '<form id="kalkan-nojs" action="/.kalkan/nojs" method="get">'
    '<input type="hidden" name="t" value="{ticket}"><input type="hidden" name="r" value="{ret}">\n'
    '<button id="kalkan-nojs-continue" type="submit">{continue}</button></form>\n'
    "</main>\n</body>\n</html>\n"
)

# Failure, too many attempts, not found: a title, a sentence and a way back.
MESSAGE_TEMPLATE = _HEAD + (
    "<style>{css}</style>\n</head>\n<body>\n"
    '<main id="kalkan">\n<h1>{heading}</h1>\n<p>{text}</p>\n'
    '<p><a class="b" id="kalkan-retry" href="{ret}">{link}</a></p>\n'
    "</main>\n</body>\n</html>\n"
)

_DYNAMIC = ("ticket", "difficulty", "ret", "nojs_url", "delay", "nojs", "wait", "wait_text",
            "heading", "text", "link")
_MARK = "\x00"


class Template:
    """A page split into literal byte pieces and per-request fields."""

    __slots__ = ("_parts", "_slots")

    def __init__(self, text: str, lang: str, extra: dict[str, str] | None = None) -> None:
        texts = {k: html.escape(v) for k, v in TEXTS[lang].items()}
        values = {**texts, **(extra or {}), "lang": lang, "css": CSS, "js": PAGE_JS}
        values.update({name: f"{_MARK}{name}{_MARK}" for name in _DYNAMIC})
        pieces = text.format(**values).split(_MARK)
        # Even indexes are literal text, odd ones field names (their slots filled per request).
        self._parts = [p.encode("utf-8") if i % 2 == 0 else b"" for i, p in enumerate(pieces)]
        self._slots = [(i, p) for i, p in enumerate(pieces) if i % 2]

    def render(self, fields: dict[str, bytes]) -> bytes:
        out = self._parts.copy()
        for i, name in self._slots:
            out[i] = fields[name]
        return b"".join(out)


CHALLENGE_PAGES = {lang: Template(CHALLENGE_TEMPLATE, lang,
                                  {"page_title": html.escape(TEXTS[lang]["title"])})
                   for lang in LANGUAGES}
WAIT_PAGES = {lang: Template(WAIT_TEMPLATE, lang,
                             {"page_title": html.escape(TEXTS[lang]["wait_title"])})
              for lang in LANGUAGES}
MESSAGE_PAGES = {lang: Template(MESSAGE_TEMPLATE, lang, {"page_title": f"{_MARK}heading{_MARK}"})
                 for lang in LANGUAGES}
_nojs_texts: dict[tuple[str, int], bytes] = {}


def _nojs_text(lang: str, delay: int) -> bytes:
    text = _nojs_texts.get((lang, delay))
    if text is None:
        text = html.escape(TEXTS[lang]["nojs"].format(s=delay)).encode("utf-8")
        if len(_nojs_texts) < 64:
            _nojs_texts[(lang, delay)] = text
    return text


def nojs_url(ticket: str, ret: str) -> str:
    """The no-JS answer URL (tickets are base64url and dots: safe in a query as they are)."""
    # In a safe_return() URL only these characters would change meaning inside a query value
    # ("%" first). Chained replace: much cheaper than str.translate for short strings.
    r = ret.replace("%", "%25").replace("&", "%26").replace("+", "%2B").replace(";", "%3B")
    return f"/.kalkan/nojs?t={ticket}&r={r}"


def challenge_page(lang: str, ticket: str, difficulty: int, ret: str, delay: int) -> bytes:
    """The proof-of-work page with the no-JS wait inside; `ret` must be a safe_return() URL."""
    return CHALLENGE_PAGES[lang].render({
        "ticket": ticket.encode("ascii"),
        "difficulty": b"%d" % difficulty,
        "ret": html.escape(ret).encode("ascii"),
        "nojs_url": html.escape(nojs_url(ticket, ret)).encode("ascii"),
        "delay": b"%d" % delay,
        "nojs": _nojs_text(lang, delay),
    })


def wait_page(lang: str, ticket: str, ret: str, seconds: int) -> bytes:
    return WAIT_PAGES[lang].render({
        "ticket": ticket.encode("ascii"),
        "ret": html.escape(ret).encode("ascii"),
        "nojs_url": html.escape(nojs_url(ticket, ret)).encode("ascii"),
        "wait": b"%d" % seconds,
        "wait_text": html.escape(TEXTS[lang]["wait_text"].format(s=seconds)).encode("utf-8"),
    })


def message_page(lang: str, kind: str, ret: str) -> bytes:
    """`kind` is "fail", "limited" or "notfound"; the link leads back to `ret`."""
    t = TEXTS[lang]
    return MESSAGE_PAGES[lang].render({
        "heading": html.escape(t[f"{kind}_title"]).encode("utf-8"),
        "text": html.escape(t[f"{kind}_text"]).encode("utf-8"),
        "ret": html.escape(ret).encode("ascii"),
        "link": html.escape(t["redirect" if kind == "notfound" else "retry"]).encode("utf-8"),
    })


def redirect_body(lang: str, ret: str) -> bytes:
    """The body of the 303 after a pass, for the rare client that does not follow redirects."""
    return (f'<!doctype html><html lang="{lang}"><meta charset="utf-8"><title>303</title>'
            f'<a href="{html.escape(ret)}">{html.escape(TEXTS[lang]["redirect"])}</a>'
            "</html>\n").encode()


_FIELD = re.compile(rb'<main id="kalkan" data-c="([^"]+)" data-d="(\d+)" data-r="([^"]*)"')


def challenge_fields(body: bytes) -> tuple[str, int, str] | None:
    """(challenge, difficulty, return URL) from a challenge page: for the traffic lab and tests."""
    m = _FIELD.search(body)
    if m is None:
        return None
    return m.group(1).decode(), int(m.group(2)), html.unescape(m.group(3).decode())
