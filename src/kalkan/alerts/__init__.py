"""Alerts: the newsroom is told when an attack starts or ends, the origin goes down or comes back,
or a certificate is near expiry, by Telegram, webhook and e-mail, at most one message per channel
per interval (docs/alerts.md)."""
