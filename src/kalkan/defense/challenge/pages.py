"""The challenge's pages as the defence sends them: the proof-of-work page (its script is the
defence's: it carries the search in pow.py), the no-JS wait and the answers' messages, rendered
from kalkan.pages with the ticket, difficulty and return URL filled per request; plus the return
URLs a challenge may send a reader back to.

The pages are rendered once per language (kalkan.pages.Pages); a request costs a join of their
byte pieces with its own fields, not a template walk.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote, urlsplit

from kalkan.defense.challenge.pow import WORKER_JS
from kalkan.defense.facts import CHALLENGE_PREFIX
from kalkan.pages import LANGUAGES, Chooser, Page, Pages
from kalkan.pages.texts import texts_for

__all__ = ["LANGUAGES", "PAGE_JS", "ChallengePages", "challenge_fields", "choose_language",
           "nojs_url", "normalize_return", "return_url_for", "safe_return"]

_default_chooser = Chooser("en")


def choose_language(accept_language: bytes | str | None) -> str:
    """The best of ky/ru/en for an Accept-Language value, English by default (the pages use
    the site's default: Pages.choose)."""
    if isinstance(accept_language, str):
        accept_language = accept_language.encode("latin-1", "replace")
    return _default_chooser.choose(accept_language)


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


# The page's own script (static: dynamic values and texts come from data-* attributes, so a CSP
# hash can pin it). It builds the progress bar, status line and continue button, then starts
# WORKER_JS in up to 4 Web Workers from a Blob, each trying every k-th nonce, and falls back to
# slices on the main thread when workers are unavailable. Progress is the chance the answer has
# been found by now, 1 - exp(-tried / 2**D): it moves steadily and never stalls at 99%.
PAGE_JS = (
    "(function(){var W=" + WORKER_JS + ";\n"
    "var d=document;function $(i){return d.getElementById(i)}"
    "var m=$('kalkan'),D=m.dataset,c=D.c,k=+D.d,r=D.r,E=Math.pow(2,k),ui=$('kalkan-js');"
    # The JS-only controls and the words about the calculation are made here, so text browsers
    # and JS-off readers never see them.
    "ui.innerHTML='<p id=\"kalkan-calc\"></p><label for=\"kalkan-progress\"></label>"
    "<progress id=\"kalkan-progress\" max=\"100\" value=\"0\"></progress>"
    "<p id=\"kalkan-status\" role=\"status\" aria-live=\"polite\"></p>"
    "<form id=\"kalkan-form\" action=\"/.kalkan/pow\" method=\"get\">"
    "<input type=\"hidden\" name=\"c\"><input type=\"hidden\" name=\"n\" id=\"kalkan-nonce\">"
    "<input type=\"hidden\" name=\"r\">"
    "<button id=\"kalkan-continue\" type=\"submit\" disabled></button></form>"
    "<p class=\"n\"><a id=\"kalkan-nojs-link\"></a></p>';"
    "var bar=$('kalkan-progress'),st=$('kalkan-status'),f=$('kalkan-form'),F=f.elements,"
    "btn=$('kalkan-continue'),a=$('kalkan-nojs-link'),ws=[],tried=0,last=-1,over=0,fell=0;"
    "ui.firstChild.textContent=D.calc;ui.children[1].textContent=D.label;st.textContent=D.starting;btn.textContent=D.go;"
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


def nojs_url(ticket: str, ret: str) -> str:
    """The no-JS answer URL (tickets are base64url and dots: safe in a query as they are)."""
    # In a safe_return() URL only these characters would change meaning inside a query value
    # ("%" first). Chained replace: much cheaper than str.translate for short strings.
    r = ret.replace("%", "%25").replace("&", "%26").replace("+", "%2B").replace(";", "%3B")
    return f"/.kalkan/nojs?t={ticket}&r={r}"


class ChallengePages:
    """The challenge's pages of one Pages, with the defence's script bound into the challenge
    page (re-bound when the pages are reloaded)."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self._generation = -1
        self._challenge: dict[str, Page] = {}
        self._nojs_texts: dict[tuple[str, int], bytes] = {}
        self._bind()

    def _bind(self) -> None:
        self._challenge = {lang: self.pages.page("challenge", lang).bind(script=PAGE_JS)
                           for lang in LANGUAGES}
        self._nojs_texts.clear()
        self._generation = self.pages.generation

    def choose(self, accept_language: bytes | None) -> str:
        return self.pages.choose(accept_language)

    def headers(self, kind: str, lang: str) -> tuple[tuple[bytes, bytes], ...]:
        if self._generation != self.pages.generation:
            self._bind()
        if kind == "challenge":
            return self._challenge[lang].headers
        return self.pages.page(kind, lang).headers

    def challenge(self, lang: str, ticket: str, difficulty: int, ret: str, delay: int) -> bytes:
        """The proof-of-work page with the no-JS wait inside; `ret` must be a safe_return()
        URL."""
        if self._generation != self.pages.generation:
            self._bind()
        return self._challenge[lang].render({
            "ticket": ticket.encode("ascii"),
            "difficulty": b"%d" % difficulty,
            "ret": html.escape(ret).encode("ascii"),
            "nojs_url": html.escape(nojs_url(ticket, ret)).encode("ascii"),
            "delay": b"%d" % delay,
            "nojs_text": self._nojs_text(lang, delay),
        })

    def _nojs_text(self, lang: str, delay: int) -> bytes:
        text = self._nojs_texts.get((lang, delay))
        if text is None:
            text = html.escape(texts_for(lang, "challenge")["nojs"].format(s=delay)).encode()
            if len(self._nojs_texts) < 64:
                self._nojs_texts[(lang, delay)] = text
        return text

    def wait(self, lang: str, ticket: str, ret: str, seconds: int) -> bytes:
        return self.pages.page("nojs-wait", lang).render({
            "ticket": ticket.encode("ascii"),
            "ret": html.escape(ret).encode("ascii"),
            "nojs_url": html.escape(nojs_url(ticket, ret)).encode("ascii"),
            "wait": b"%d" % seconds,
            "wait_text": html.escape(
                texts_for(lang, "nojs-wait")["text"].format(s=seconds)).encode(),
        })

    def message(self, lang: str, kind: str, ret: str) -> bytes:
        """`kind` is challenge-failed, challenge-limited or challenge-notfound; its link leads
        back to `ret`."""
        return self.pages.page(kind, lang).render({"ret": html.escape(ret).encode("ascii")})


def redirect_body(lang: str, ret: str) -> bytes:
    """The body of the 303 after a pass, for the rare client that does not follow redirects."""
    link = texts_for(lang, "challenge-notfound")["link"]
    return (f'<!doctype html><html lang="{lang}"><meta charset="utf-8"><title>303</title>'
            f'<a href="{html.escape(ret)}">{html.escape(link)}</a>'
            "</html>\n").encode()


_FIELD = re.compile(rb'<main id="kalkan" data-c="([^"]+)" data-d="(\d+)" data-r="([^"]*)"')


def challenge_fields(body: bytes) -> tuple[str, int, str] | None:
    """(challenge, difficulty, return URL) from a challenge page: for the traffic lab and tests."""
    m = _FIELD.search(body)
    if m is None:
        return None
    return m.group(1).decode(), int(m.group(2)), html.unescape(m.group(3).decode())
