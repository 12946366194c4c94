"""The pages' one stylesheet (inline in every page: nothing is fetched) and its colours."""

from __future__ import annotations

# Colours checked for WCAG AA (>= 4.5:1 for text) in tests/unit/test_challenge_pages.py.
FG, BG, ACCENT, MUTED, FOCUS = "#1b1b1b", "#ffffff", "#1a4d8f", "#4a4a4a", "#b34700"
DARK_FG, DARK_BG, DARK_ACCENT, DARK_MUTED = "#eeeeee", "#121212", "#8ab4f8", "#bbbbbb"

CSS = (
    f"body{{margin:0;font:1.05em/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    f"color:{FG};background:{BG}}}"
    "main{max-width:34em;margin:0 auto;padding:1.5em 1em}h1{font-size:1.5em;margin:0 0 .6em}"
    ".site{display:flex;align-items:center;gap:.7em;margin:0 0 1.4em;font-weight:600;"
    "font-size:1.1em}.site img{max-height:3em;max-width:10em}"
    "progress{display:block;width:100%;height:1.2em;margin:.3em 0}"
    f"button,.b{{font:inherit;padding:.5em 1.2em;border:0;border-radius:.3em;background:{ACCENT};"
    "color:#fff;cursor:pointer;text-decoration:none;display:inline-block}"
    "button:disabled{background:#6b6b6b;cursor:default}"
    f"a{{color:{ACCENT}}}.n{{font-size:.9em;color:{MUTED}}}"
    f"a:focus,button:focus{{outline:3px solid {FOCUS};outline-offset:2px}}"
    f"@media(prefers-color-scheme:dark){{body{{color:{DARK_FG};background:{DARK_BG}}}"
    f"a{{color:{DARK_ACCENT}}}.n{{color:{DARK_MUTED}}}}}"
)
