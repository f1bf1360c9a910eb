"""Load benchmark of the web process (not a test): many Label Studio users opening tasks at once.

Starts the real parts on this machine (a redis-server of its own, the backend under `tagclip serve` in queue
mode, `tagclip worker`s on a tiny random-weight checkpoint, a local HTTP server for the images), then sends
CLIENTS concurrent /predict requests of TASKS tasks each, ROUNDS times, while a probe calls /health every
0.1 s as Label Studio does (its timeout is 1 s). Reports /health latency (p50, p95, max), /predict latency (p50,
p95), tasks/s, and whether every task was answered.

    .venv/bin/python bench/bench_predict_load.py                       # 32 clients x 8 tasks, 2 workers
    .venv/bin/python bench/bench_predict_load.py --clients 16 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.queue_stack import queue_env, run_and_report, start_queue_redis  # noqa: E402
from tagclip_core.random_weights import TINY_VIT_B_16, write_random_checkpoint  # noqa: E402
from tests.fixtures.http_server import serve_directory  # noqa: E402
from tests.integration.stack import png_bytes, start_backend, start_worker, wait_workers  # noqa: E402

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat"/><Choice value="Dog"/><Choice value="Car"/></Choices></View>'
)
HEALTH_PERIOD_S = 0.1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe_health(url: str, stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            requests.get(url + "/health", timeout=10)
        finally:
            samples.append(time.perf_counter() - started)
        stop.wait(HEALTH_PERIOD_S)


def one_client(url: str, tasks: list[dict], rounds: int) -> list[tuple[float, int]]:
    """(seconds, tasks answered with a result) per /predict."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = requests.post(url + "/predict", json={"tasks": tasks, "label_config": CONFIG}, timeout=120).json()
        out.append((time.perf_counter() - started, sum(1 for r in answer["results"] if "result" in r)))
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    checkpoint = write_random_checkpoint(work / "tiny.pt", TINY_VIT_B_16, seed=0)
    logs = work / "logs"
    logs.mkdir()
    redis, redis_url = start_queue_redis(logs)
    env = queue_env(
        redis_url,
        checkpoint,
        TAGCLIP_CACHE_DIR=str(work / "cache"),
        WORKER_HEARTBEAT="1",
        OMP_NUM_THREADS="1",
        **({"SERVER_THREADS": str(args.server_threads)} if args.server_threads else {}),
    )
    workers = [start_worker(env, logs, f"bench-w{i}") for i in range(args.workers)]
    backend, url = start_backend(env, logs)
    images = work / "images"
    images.mkdir()
    try:
        with serve_directory(images) as server:
            refs = [server.put(f"{i}.png", png_bytes(96, 128, seed=i)) for i in range(args.tasks)]
            wait_workers(url, args.workers)
            tasks = [{"id": i, "data": {"image": ref}} for i, ref in enumerate(refs)]
            one_client(url, tasks, 1)  # warm-up: text classifier and caches
            health: list[float] = []
            stop = threading.Event()
            probe = threading.Thread(target=probe_health, args=(url, stop, health), daemon=True)
            probe.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = [r for f in [pool.submit(one_client, url, tasks, args.rounds) for _ in range(args.clients)]
                           for r in f.result()]  # fmt: skip
            elapsed = time.perf_counter() - started
            stop.set()
            probe.join()
    finally:
        backend.stop()
        for worker in workers:
            worker.stop()
        redis.stop()
    latencies = [s for s, _ in results]
    answered = sum(n for _, n in results)
    return {
        "clients": args.clients,
        "tasks_per_request": args.tasks,
        "workers": args.workers,
        "requests": len(results),
        "tasks_answered": answered,
        "tasks_sent": len(results) * args.tasks,
        "tasks_per_s": round(answered / elapsed, 2),
        "predict_p50_s": round(statistics.median(latencies), 3),
        "predict_p95_s": round(percentile(latencies, 0.95), 3),
        "health_samples": len(health),
        "health_p50_s": round(statistics.median(health), 4),
        "health_p95_s": round(percentile(health, 0.95), 4),
        "health_max_s": round(max(health), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=8, help="tasks per /predict")
    parser.add_argument("--rounds", type=int, default=2, help="/predict requests per client")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server-threads", type=int, help="SERVER_THREADS (default: the backend's)")
    parser.add_argument("--json", help="also write the figures here")
    return run_and_report(parser.parse_args(), run, "tagclip-load-")


if __name__ == "__main__":
    sys.exit(main())
