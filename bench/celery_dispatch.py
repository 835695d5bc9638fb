"""The Celery side of `bench/dispatch-vs-celery.sh`: the same round trip as `loadgen`.

One module holds both ends:

- the Celery app and its task, `synthetic`, which does what loadgen's synthetic agent does:
  return N zero bytes as base64 with their SHA-256 (hex). The worker is started by the shell
  script with `celery -A celery_dispatch worker ...`;
- a client (`python celery_dispatch.py client ...`) that submits jobs in a closed loop, at most
  `--concurrency` in flight, and waits for each result with `AsyncResult.get()`, timing every
  round trip from the submit to holding the (checked) result.

Broker and result backend are the same Redis (`CELERY_BENCH_REDIS`, e.g.
`redis://127.0.0.1:6390/0`): results are persisted there (`task_ignore_result=False`,
expiring after a day, Celery's default) exactly as infermine persists them in SQLite.

Configuration, chosen for throughput on a small machine (the shell script's header lists the
pools that were tried and why the threads pool won): json serializer, no rate limits, no gossip/mingle/heartbeat between
workers (the script starts a single worker), a prefetch multiplier large enough that the
worker never waits on the broker between two short tasks, acks on receipt (Celery's default,
`task_acks_late=False`).

The client runs `--concurrency` threads spread over `--procs` processes. Each thread has its
own result backend (Celery keeps `app.backend` per thread) and so its own pub/sub
subscription; the broker connections come from kombu's pool. Before timing, each thread runs
one untimed warm-up job, so connections are open and the worker is known to be consuming
(loadgen likewise connects its agents before it starts the clock). The output ends with one
machine-readable line:

    celery-summary: completed=<n> failed=<n> elapsed_s=<x> jobs_per_s=<x> p50_ms=<x> p90_ms=<x>
      p99_ms=<x> max_ms=<x> client_cpu_s=<x>

(on one line).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import multiprocessing
import os
import sys
import threading
import time

from celery import Celery

REDIS_URL = os.environ.get("CELERY_BENCH_REDIS", "redis://127.0.0.1:6379/0")

app = Celery("celery_dispatch", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=False,
    # Celery's default expiry (1 day): the result stays in Redis like infermine's row.
    result_expires=86400,
    task_acks_late=False,
    worker_prefetch_multiplier=int(os.environ.get("CELERY_BENCH_PREFETCH", "64")),
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
    broker_pool_limit=int(os.environ.get("CELERY_BENCH_POOL_LIMIT", "256")),
    # No per-task "STARTED" state write: one result write per job, as in infermine.
    task_track_started=False,
    # The client threads each keep their own subscription; no result object caching needed.
    result_cache_max=-1,
    worker_hijack_root_logger=False,
    worker_log_color=False,
)


@app.task(name="synthetic")
def synthetic(output_bytes: int, seed: int) -> dict:
    """What loadgen's synthetic agent does: N zero bytes, base64, and their SHA-256."""
    del seed  # as in loadgen, the seed only makes every job's params distinct
    data = bytes(output_bytes)
    return {
        "data_b64": base64.b64encode(data).decode("ascii"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def check(result: object, output_bytes: int) -> bool:
    """The check infermine's coordinator makes on every result: size and SHA-256."""
    if not isinstance(result, dict):
        return False
    try:
        data = base64.b64decode(result["data_b64"])
    except (KeyError, ValueError, TypeError):
        return False
    return len(data) == output_bytes and hashlib.sha256(data).hexdigest() == result.get("sha256")


def one_job(output_bytes: int, seed: int, timeout: float) -> str | None:
    """Runs one job; returns None when it completed and checked, else what went wrong."""
    try:
        value = synthetic.apply_async((output_bytes, seed)).get(timeout=timeout)
    except Exception as error:  # noqa: BLE001 - any failure counts as a failed job
        return f"{type(error).__name__}: {error}"
    return None if check(value, output_bytes) else f"wrong result {value!r:.200}"


def run_threads(
    jobs: list[int], threads: int, output_bytes: int, timeout: float, start_at: float | None
) -> tuple[list[float], int, float, float, float]:
    """Runs `jobs` (their seeds) on `threads` threads, each one job at a time.

    Returns the round trips in seconds, the failures, the first and last clock readings, and
    the CPU time this process used in between.
    """
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    failures = [0]
    ready = threading.Barrier(threads + 1)
    # After the first failure no thread starts another job: the run has failed, and waiting out
    # every remaining job's timeout would only delay saying so.
    stop = threading.Event()

    def worker() -> None:
        # Untimed warm-up: opens this thread's broker and pub/sub connections.
        one_job(output_bytes, -1, timeout)
        ready.wait()
        mine: list[float] = []
        failed = 0
        while not stop.is_set():
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(jobs):
                break
            t0 = time.perf_counter()
            error = one_job(output_bytes, jobs[i], timeout)
            if error is None:
                mine.append(time.perf_counter() - t0)
            else:
                failed += 1
                if not stop.is_set():
                    stop.set()
                    print(f"celery_dispatch: job {jobs[i]} failed: {error}", file=sys.stderr)
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    ready.wait()
    if start_at is not None:
        # Processes start together: wait for the common start time.
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
    started = time.time()
    cpu0 = time.process_time()
    for t in pool:
        t.join()
    return latencies, failures[0], started, time.time(), time.process_time() - cpu0


def run_process(args: tuple) -> tuple[list[float], int, float, float, float]:
    jobs, threads, output_bytes, timeout, start_at = args
    return run_threads(jobs, threads, output_bytes, timeout, start_at)


def percentile(sorted_s: list[float], q: float) -> float:
    """Same definition as loadgen: the ceil(n*q)-th smallest, in ms."""
    if not sorted_s:
        return 0.0
    rank = min(max(math.ceil(len(sorted_s) * q), 1), len(sorted_s))
    return sorted_s[rank - 1] * 1000.0


def client(ns: argparse.Namespace) -> int:
    procs = max(1, min(ns.procs, ns.concurrency))
    seeds = list(range(ns.jobs))
    # Split jobs and threads as evenly as possible over the processes.
    shares = []
    for p in range(procs):
        threads = ns.concurrency // procs + (1 if p < ns.concurrency % procs else 0)
        shares.append((seeds[p::procs], threads))
    if procs == 1:
        latencies, failures, started, ended, cpu = run_threads(
            shares[0][0], shares[0][1], ns.output_bytes, ns.timeout, None
        )
    else:
        # Each process warms up, then all start at the same moment.
        start_at = time.time() + ns.start_delay
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(procs) as pool:
            parts = pool.map(
                run_process,
                [(j, t, ns.output_bytes, ns.timeout, start_at) for j, t in shares],
            )
        latencies = [x for part in parts for x in part[0]]
        failures = sum(part[1] for part in parts)
        started = min(part[2] for part in parts)
        ended = max(part[3] for part in parts)
        cpu = sum(part[4] for part in parts)
    elapsed = ended - started
    latencies.sort()
    completed = len(latencies)
    rate = completed / elapsed if elapsed > 0 else 0.0
    print(
        f"celery: jobs={ns.jobs} mode=closed-loop concurrency={ns.concurrency} "
        f"(client: {procs} process(es) of threads)"
    )
    print(
        f"celery: completed={completed} failed={failures} elapsed={elapsed:.2f}s "
        f"throughput={rate:.0f} jobs/s"
    )
    p = {q: percentile(latencies, q) for q in (0.5, 0.9, 0.99, 1.0)}
    print(
        f"celery: round trip apply_async->AsyncResult.get: p50={p[0.5]:.2f}ms "
        f"p90={p[0.9]:.2f}ms p99={p[0.99]:.2f}ms max={p[1.0]:.2f}ms"
    )
    print(
        f"celery: client cpu={cpu:.2f}s ({cpu * 1e6 / max(completed, 1):.0f} us/job, "
        f"{cpu * 100 / elapsed if elapsed > 0 else 0:.0f}% of one core)"
    )
    print(
        f"celery-summary: completed={completed} failed={failures} elapsed_s={elapsed:.3f} "
        f"jobs_per_s={rate:.1f} p50_ms={p[0.5]:.3f} p90_ms={p[0.9]:.3f} "
        f"p99_ms={p[0.99]:.3f} max_ms={p[1.0]:.3f} client_cpu_s={cpu:.3f}"
    )
    sys.stdout.flush()
    return 0 if failures == 0 and completed == ns.jobs else 1


def ping(ns: argparse.Namespace) -> int:
    """Waits until a worker answers one job (the shell script's readiness check)."""
    deadline = time.time() + ns.timeout
    while time.time() < deadline:
        try:
            value = synthetic.apply_async((8, 0)).get(timeout=2, interval=0.05)
            if check(value, 8):
                return 0
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    print("celery_dispatch: no worker answered", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="submit jobs and time each round trip")
    c.add_argument("--jobs", type=int, default=10000)
    c.add_argument("--concurrency", type=int, default=64)
    c.add_argument("--output-bytes", type=int, default=64)
    c.add_argument("--procs", type=int, default=1, help="client processes (threads split over them)")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one result")
    c.add_argument("--start-delay", type=float, default=3.0, help=argparse.SUPPRESS)
    p = sub.add_parser("ping", help="wait until a worker answers")
    p.add_argument("--timeout", type=float, default=60.0)
    ns = parser.parse_args()
    return client(ns) if ns.command == "client" else ping(ns)


if __name__ == "__main__":
    sys.exit(main())
