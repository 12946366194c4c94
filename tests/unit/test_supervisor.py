"""The supervisor's pure parts: shares of the machine-wide limits, each worker's config, every
worker's metrics as one text, the worker count, and stdout lines written whole."""

from __future__ import annotations

import os
import threading

import pytest

from kalkan.config import (
    Config,
    ConfigError,
    WebhookAlertConfig,
    load_config_text,
    resolve_workers,
)
from kalkan.observe.access_log import _write_whole_lines
from kalkan.supervisor import merge_metrics, share, worker_config


def test_shares_add_up_to_the_whole_and_differ_by_one_at_most() -> None:
    for total in (1, 2, 3, 16, 17, 256):
        for n in range(1, 9):
            parts = [share(total, k, n) for k in range(n)]
            assert sum(parts) == total and max(parts) - min(parts) <= 1


def test_each_worker_holds_its_share_and_only_worker_0_binds_the_admin_port_and_alerts() -> None:
    config = Config()
    config.origin.max_concurrency = 16
    config.origin.queue_size = 256
    config.limits.max_connections = 20000
    config.alerts.webhook = WebhookAlertConfig(url="https://alerts.example/hook")
    configs = [worker_config(config, k, 3) for k in range(3)]
    assert [c.origin.max_concurrency for c in configs] == [6, 5, 5]
    assert sum(c.origin.queue_size for c in configs) == 256
    assert sum(c.limits.max_connections for c in configs) == 20000
    assert configs[0].admin.listen == config.admin.listen
    assert [c.admin.listen for c in configs[1:]] == ["127.0.0.1:0"] * 2  # private, loopback
    assert configs[0].alerts.webhook is not None
    assert all(c.alerts.webhook is None for c in configs[1:])
    assert all(c.workers == 1 for c in configs)
    assert config.origin.max_concurrency == 16  # the original is left as it was


def test_every_workers_metrics_in_one_text_each_family_once_with_a_worker_label() -> None:
    one = ("# HELP kalkan_requests_total Requests.\n# TYPE kalkan_requests_total counter\n"
           'kalkan_requests_total{status="200",cache="HIT"} 5\n'
           "# HELP kalkan_open Open.\n# TYPE kalkan_open gauge\nkalkan_open 3\n"
           "# HELP kalkan_lat Latency.\n# TYPE kalkan_lat histogram\n"
           'kalkan_lat_bucket{le="+Inf"} 2\nkalkan_lat_sum 0.5\nkalkan_lat_count 2\n')
    text = merge_metrics({0: one, 1: one.replace(" 5\n", " 7\n")})
    lines = text.splitlines()
    assert lines.count("# TYPE kalkan_requests_total counter") == 1
    assert lines.count("# HELP kalkan_lat Latency.") == 1
    i = lines.index("# TYPE kalkan_requests_total counter")
    assert lines[i + 1:i + 3] == [
        'kalkan_requests_total{worker="0",status="200",cache="HIT"} 5',
        'kalkan_requests_total{worker="1",status="200",cache="HIT"} 7']
    assert 'kalkan_open{worker="1"} 3' in lines
    assert 'kalkan_lat_bucket{worker="0",le="+Inf"} 2' in lines
    assert 'kalkan_lat_sum{worker="1"} 0.5' in lines
    # Grouped: a family's samples follow its own HELP/TYPE, not another's.
    j = lines.index("# TYPE kalkan_open gauge")
    assert lines[j + 1:j + 3] == ['kalkan_open{worker="0"} 3', 'kalkan_open{worker="1"} 3']


def test_the_worker_count_defaults_to_the_usable_cores_within_the_origins_slots() -> None:
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(load_config_text("")) == min(cores, 16)
    assert resolve_workers(load_config_text("origin: {max_concurrency: 1}\n")) == 1
    assert resolve_workers(load_config_text("workers: 1\n")) == 1
    with pytest.raises(ConfigError, match=r"k\.yaml:1: workers: 3 workers need origin"):
        load_config_text("workers: 3\norigin: {max_concurrency: 2}\n", "k.yaml", files=False)
    with pytest.raises(ConfigError, match="workers: must be at least 1"):
        load_config_text("workers: 0\n", "k.yaml", files=False)


def test_stdout_lines_are_written_in_whole_lines_of_at_most_a_pipe_buffer() -> None:
    """Two workers writing batches to one pipe: every line read back is whole."""
    r, w = os.pipe()
    batches = [[bytearray(f'{{"worker":{k},"n":{i},"pad":"{"x" * 700}"}}\n'.encode())
                for i in range(40)] for k in range(2)]
    got: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(r, 65536):
            got.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    writers = [threading.Thread(target=lambda b=b: [_write_whole_lines(w, b) for _ in range(20)])
               for b in batches]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    os.close(w)
    reader.join()
    os.close(r)
    lines = b"".join(got).decode().splitlines()
    assert len(lines) == 2 * 40 * 20
    assert set(lines) == {line.decode().rstrip("\n") for b in batches for line in b}
