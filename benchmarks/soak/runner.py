"""One soak run: the clients' threads and the sampler's for the set time, then the drain and the report."""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from benchmarks.soak import report, watch
from benchmarks.soak.options import Options
from benchmarks.soak.targets import Target
from benchmarks.soak.traffic import Client, Outcome


def run(target: Target, options: Options) -> dict[str, Any]:
    """The traffic, the samples taken while it runs, and the checks after it."""
    endpoint = target.endpoint
    process = psutil.Process(target.pid) if target.pid else None
    outcomes: list[Outcome] = []
    samples: list[watch.Sample] = []
    begun = time.monotonic()
    stop_at = begun + options.duration_s
    with endpoint.client() as http:
        counted = watch.counted(http)
        samples.append(watch.take(http, process, 0.0))
        done = threading.Event()
        sampler = threading.Thread(
            target=watch.sampling, args=(http, process, begun, options, samples, outcomes, done), daemon=True
        )
        sampler.start()
        clients = [
            threading.Thread(target=Client(endpoint, options, n, stop_at, outcomes).run, daemon=True)
            for n in range(options.clients)
        ]
        for client in clients:
            client.start()
        # Each client stops starting requests at stop_at, and each request ends within its timeout.
        for client in clients:
            client.join(timeout=max(stop_at - time.monotonic(), 0) + options.request_timeout_s + 30)
        done.set()
        sampler.join()
        hung = sum(client.is_alive() for client in clients)
        leaks = watch.drain(http, options.drain_timeout_s)
        samples.append(watch.take(http, process, time.monotonic() - begun))
        leaks["server_counted"] = dict(watch.counted(http) - counted)
    return report.build(target, options, outcomes, samples, leaks, hung)
