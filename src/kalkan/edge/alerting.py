"""What the alerts watch in a running edge: the threat level and its loudest clients, the
origin's breaker, the certificates on disk; wires them to the alert senders (kalkan/alerts/,
which imports nothing from the edge)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from kalkan.alerts.channels import channels, site_name
from kalkan.alerts.dispatch import Dispatcher
from kalkan.alerts.watch import Sources, Watcher
from kalkan.config import Config
from kalkan.edge.origin import Breaker
from kalkan.edge.pipeline import Pipeline

log = logging.getLogger("kalkan")


def start_alerts(config: Config, pipeline: Pipeline, acme_cert: Callable[[], str | None]
                 ) -> tuple[Dispatcher, Watcher] | None:
    """The alert watcher and one sender per configured channel, started; None when no channel
    is configured (no tasks at all) or one cannot be built. `acme_cert` says where the ACME
    certificate is, if there is one."""
    try:
        made = channels(config.alerts)
    except ValueError as exc:  # a secret file gone since the config was checked
        log.error("alerts are off: %s", exc)
        return None
    if not made:
        return None
    dispatcher = Dispatcher(config.alerts, site_name(config), made, pipeline.metrics)
    breaker = pipeline.upstream.breaker

    def certificate_files() -> list[str]:
        files = [pair["cert"] for pair in config.tls.certificates] if config.tls else []
        acme = acme_cert()
        if acme is not None and Path(acme).is_file():
            files.insert(0, acme)
        return files

    defense = pipeline.defense  # the null defence answers too: peace, nobody loud
    sources = Sources(threat=lambda: (defense.threat_level,
                                      str(defense.threat_report()["reason"])),
                      attackers=lambda: defense.loudest(time.time()),
                      origin_failing=lambda: breaker.state != Breaker.CLOSED,
                      origin=config.origin.url, certificates=certificate_files)
    dispatcher.start()
    watch = Watcher(sources, dispatcher.notify, config.alerts.cert_expiry_days)
    watch.start()
    log.info("alerts on: %s", ", ".join(ch.name for ch in made))
    return dispatcher, watch
