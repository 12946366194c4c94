"""What a running edge shares with others beside serving: the cluster link (Redis, or the
workers' relay, one worker running it) and the alliance (its feed, its allies' feeds). The edge
starts, reloads and stops them through this one object."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kalkan.alliance.service import AllianceService
from kalkan.cluster.assemble import start_cluster
from kalkan.cluster.link import Link
from kalkan.cluster.relay import Relay, RelayPlan
from kalkan.config import Config
from kalkan.edge.pipeline import Pipeline

log = logging.getLogger("kalkan")


class Together:
    """The cluster link, the workers' relay and the alliance of one edge."""

    def __init__(self) -> None:
        self.cluster: Link | None = None
        # Set by the supervisor before the edge starts, for a worker of several without
        # cluster.redis: the workers' relay to join, and whether this worker runs it.
        self.relay_plan: RelayPlan | None = None
        self.relay: Relay | None = None
        self.shares_reloads = True   # False for a worker: its supervisor passes SIGHUP on
        self.alliance: AllianceService | None = None
        self._reloading: asyncio.Task[None] | None = None

    async def start(self, config: Config, pipeline: Pipeline,
                    reload: Callable[[], object]) -> None:
        plan = self.relay_plan
        if plan is not None and config.cluster.redis is None:
            if plan.serve:
                self.relay = Relay(plan.address, plan.sock)
                await self.relay.start()
            self.cluster = start_cluster(config, pipeline, reload, relay=plan.address,
                                         worker=plan.name)
        else:
            self.cluster = start_cluster(config, pipeline, reload)
        if getattr(pipeline.defense, "decisions", None) is not None:  # the defence is on
            self.alliance = AllianceService(config, pipeline.defense, pipeline.metrics)
            self.alliance.start()

    def purged(self, url: str | None) -> None:
        if self.cluster is not None:
            self.cluster.state.purged(url)   # the other edges purge it too

    def reloaded(self, share: bool) -> None:
        """This edge reloaded: the other edges too (`share`), and the allies file is read
        again."""
        if share and self.shares_reloads and self.cluster is not None:
            self.cluster.state.reloaded()
        if self.alliance is not None:
            self._reloading = asyncio.get_running_loop().create_task(self.alliance.reload())

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()
        if self.relay is not None:
            await self.relay.close()
        if self.alliance is not None:
            await self.alliance.close()
