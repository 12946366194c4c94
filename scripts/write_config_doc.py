"""Writes docs/config.md from the config dataclasses, so the reference never drifts from code."""

from __future__ import annotations

from pathlib import Path

from kalkan.config import describe

HEAD = """# Configuration reference

`kalkan serve --config kalkan.yaml` reads one YAML file; flags (`--origin`, `--listen`, `--admin`,
`--access-log`, `--cache-dir`, `--state-dir`, `--workers`) override it; without `--config`,
`$KALKAN_CONFIG` names the file (and `$KALKAN_WORKERS` the number of workers when neither the flag
nor the file does: [workers.md](workers.md)). `kalkan check-config FILE` makes the same checks
`serve` makes before it starts and lists every problem at once, so a file it passes is one `serve`
accepts: every key known and of the right type, no key given twice in one mapping (both lines are
named), every number finite (`.nan` and `.inf` are refused) and within the bounds the table gives,
and the files the config names loaded as `serve` loads them (`defense.policy` compiled, each
`tls.certificates` pair read, `user` and `group` exist, an admin listener off loopback has an
`admin.token` of at least 16 characters). Every error names the file, the line and the dotted key
(and suggests the key you probably meant).

Paths (`state_dir`, `cache.dir`, `access_log.path`) are relative to the working directory. As a
service (`kalkan --service`, or `KALKAN_SERVICE=1`) the ones the file leaves unset are
`/var/lib/kalkan`, `/var/cache/kalkan` and `/var/log/kalkan/access.log`, and the file defaults to
`/etc/kalkan/kalkan.yaml`; see [install.md](install.md).

Durations: `500ms`, `10s`, `5m`, `6h`, `1d` or a number of seconds. Sizes: `64KiB`, `256MiB`,
`1GiB`, `1GB` or a number of bytes.

Listeners: `[::]:PORT` accepts IPv4 readers too (one dual-stack socket; their addresses are logged
and matched as plain `a.b.c.d`). At start the open-files limit (`RLIMIT_NOFILE`) is raised towards
the hard limit to fit `limits.max_connections` plus a margin for origin connections and files; if
the hard limit is lower, one warning says how many connections can actually be held.

The admin listener belongs on loopback (`127.0.0.1:9181`): there `/metrics` and `/healthz` are
open, for a Prometheus on the same machine, as is the dashboard's read-only view (`/`,
`/api/live`), and the other routes need the token. On any other
address `admin.token` must be set (`serve` and `check-config` refuse the file without it), `serve`
logs a warning, and every route but the dashboard's sign-in page, `/metrics` included, answers 401
without `Authorization: Bearer TOKEN` or the dashboard's session cookie
([dashboard.md](dashboard.md)).

TLS (the whole story is in [https.md](https.md)): with a `tls` section every `listen` address
speaks HTTPS. Certificates are your own PEM files (`tls.certificates`, picked by SNI, reloaded by
`kalkan reload` or SIGHUP) or come from an ACME CA (`tls.acme`: Let's Encrypt or a private CA),
or both. With `tls.acme` the edge orders one certificate for all `tls.acme.domains` over HTTP-01,
keeps it (key and chain in one 0600 file) and the account key in `STATE_DIR/acme/`, renews it
`renew_before_days` before expiry and swaps it in without closing connections. `tls.http_listen`
is then required: the CA fetches `http://NAME/.well-known/acme-challenge/TOKEN` on port 80, and
the edge answers that path itself, before the redirect, the defence and the cache (unknown tokens
get a 404 and never reach the origin). Until the first certificate arrives the HTTPS listeners
are bound but refuse connections and plain HTTP serves the site; `kalkan cert status --config
FILE` shows the stored certificate and when it renews.

The defaults are made for WordPress (docs/wordpress.md): with no file at all, anonymous pages are
microcached for 10 s and kept for 6 h of grace, WordPress's and its common plugins' session cookies
pass to the origin, `?ver=` keeps stylesheets and scripts apart, and admin, login, cron, XML-RPC,
previews and nonces are never cached. Why 10 s: a flood of one page then costs the origin one
request per 10 s, and an edit shows within 10 s even without the purge plugin; 1 s leaves most
pages of a small site uncached between two readers. Every request the cache passes or does not
store says why in the access log's `reason` (`never_cache:path=/wp-admin/*`, `credentials`...).

TLS listeners offer HTTP/2 (ALPN `h2`) beside HTTP/1.1 unless `tls.http2: false`. HTTP/2 requests
go through the same defence, cache and `limits` (header sizes, body size and timeouts, send
timeout, connections per client); per connection at most 100 concurrent streams, and floods of
resets, SETTINGS, PINGs or CONTINUATION frames end the connection (docs/DESIGN.md, "HTTP/2 over
TLS").

A minimal file (a complete commented one for WordPress: `examples/wordpress.yaml`):

```yaml
listen: ["0.0.0.0:80"]
origin:
  url: http://127.0.0.1:8000
  max_concurrency: 8     # what your origin can take at once
cache:
  microcache_ttl: 10s    # the default: a flood of one page = one origin request per 10 s
```

This file is generated by `python scripts/write_config_doc.py` from `src/kalkan/config.py`.

| key | default | meaning |
|---|---|---|
"""


def main() -> None:
    rows = [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in describe()]
    out = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    out.write_text(HEAD + "\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
