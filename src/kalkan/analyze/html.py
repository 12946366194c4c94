"""The report's blocks as one self-contained HTML page (report.html): styles inline, charts as
data: URIs, no script, no font or image from anywhere else, and a Content-Security-Policy
that would stop one if the page were ever changed to ask (the privacy rule: a report opened
by an investigator tells nobody that it was opened)."""

from __future__ import annotations

import base64
from html import escape

from kalkan.analyze.document import Block, Bullets, Chart, Code, Heading, Paragraph, Table, Text
from kalkan.analyze.markdown import clip

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;
margin:0 auto;max-width:1180px;padding:1.2em 1.4em 3em;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .4em}h2{font-size:1.2em;margin:1.6em 0 .5em;
border-bottom:1px solid #d8dee4;padding-bottom:.2em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #d8dee4;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f5f7}td{font-variant-numeric:tabular-nums}
code{font:12px/1.3 ui-monospace,"DejaVu Sans Mono",monospace;background:#f3f5f7;
padding:0 .2em;word-break:break-all}
figure{margin:.6em 0 1em}figure img{max-width:100%;height:auto;border:1px solid #eef1f4}
figcaption{font-size:12px;color:#57606a}
@media (prefers-color-scheme:dark){body{background:#0d1117;color:#e6edf3}
th{background:#161b22}code{background:#161b22}th,td{border-color:#30363d}
figure img{background:#fff}}
"""


def _text(text: Text) -> str:
    parts = [text] if isinstance(text, str) else text
    return "".join(f"<code>{escape(clip(p))}</code>" if isinstance(p, Code) else escape(p)
                   for p in parts)


def render(doc: list[Block], images: dict[str, bytes], title: str = "Kalkan report") -> str:
    """`images`: chart name → PNG bytes; a Chart block without its image is left out."""
    body: list[str] = []
    for block in doc:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            body.append(f"<h{level}>{escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_text(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_text(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Chart):
            png = images.get(block.name)
            if png is not None:
                data = base64.b64encode(png).decode("ascii")
                body.append(f'<figure><img id="chart-{escape(block.name)}" '
                            f'src="data:image/png;base64,{data}" alt="{escape(block.alt)}">'
                            f"<figcaption>{escape(block.alt)}</figcaption></figure>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{escape(h)}</th>" for h in block.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
