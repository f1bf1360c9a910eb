"""Big vocabularies (not a test): time from /setup to the first /predict with results, from a cold text cache.

Starts the real parts (a redis-server of its own, the backend under `tagclip serve` in queue mode, `tagclip worker`
processes on a random-weight checkpoint of the real ViT-B/16 shape, a local HTTP server for the image), announces
a label config of LABELS new labels with /setup (85 templates each, the engine's default), then asks /predict for
one task every PAUSE seconds until an answer carries a `result`. Two runs, each with a cold cache and a queue of
its own: "cold", and "killed", where the worker is SIGKILLed once half the columns are on disk and a new one is
started. Reports /setup's latency, the time to the first prediction, when the build's last part ended, and for
the killed run how many columns were on disk at the kill and how many of those were built again.

    .venv/bin/python bench/bench_vocabulary.py --labels 1000          # ~2 x 15 min on a quiet 2-core machine
    .venv/bin/python bench/bench_vocabulary.py --labels 100 --json out.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import redis as redis_client
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.keys import RedisKeys  # noqa: E402
from backend.vocabulary import VocabularyClaims  # noqa: E402
from bench.queue_stack import queue_env, run_and_report, start_queue_redis  # noqa: E402
from tagclip_core.prompts import TAGCLIP_TEMPLATES  # noqa: E402
from tagclip_core.random_weights import TINY_VIT_B_16, VIT_B_16, write_random_checkpoint  # noqa: E402
from tests.fixtures.http_server import serve_directory  # noqa: E402
from tests.integration.stack import png_bytes, start_backend, start_worker, wait_workers  # noqa: E402
from tests.integration.vocab_helpers import claimed_vocabulary, label_config, saved_columns  # noqa: E402

SHAPES = {"vit-b-16": VIT_B_16, "tiny": TINY_VIT_B_16}


def scenario(args: argparse.Namespace, env: dict[str, str], work: Path, name: str, kill: bool) -> dict:
    cache = work / f"cache-{name}"
    env = {**env, "TAGCLIP_CACHE_DIR": str(cache), "TAGCLIP_QUEUE": f"bench-vocab-{name}"}
    logs = work / "logs"
    workers = [start_worker(env, logs, f"{name}-w{i}") for i in range(args.workers)]
    backend, url = start_backend(env, logs, name=f"backend-{name}")
    config = label_config(args.labels)
    connection = redis_client.Redis.from_url(env["REDIS_URL"])
    claims = VocabularyClaims(connection, RedisKeys(env["TAGCLIP_QUEUE"]))
    figures: dict = {"labels": args.labels, "workers": args.workers, "killed": kill}
    try:
        wait_workers(url, args.workers, timeout=300)
        started = time.perf_counter()
        answer = requests.post(url + "/setup", json={"project": "1", "schema": config}, timeout=30)
        figures["setup_s"] = round(time.perf_counter() - started, 3)
        assert answer.status_code == 200, answer.text
        task = {"id": 1, "data": {"image": args.image_url}}
        before_kill: dict[Path, int] | None = None
        attempts = 0
        while True:
            if kill and before_kill is None and len(saved_columns(cache)) >= args.labels // 2:
                workers[0].kill9()
                before_kill = saved_columns(cache)
                figures["kill_at_s"] = round(time.perf_counter() - started, 1)
                workers[0] = start_worker(env, logs, f"{name}-w0-restarted")
            attempts += 1
            result = requests.post(url + "/predict", json={"tasks": [task], "label_config": config}, timeout=120)
            if "result" in result.json()["results"][0]:
                break
            time.sleep(args.pause)
        figures["first_prediction_s"] = round(time.perf_counter() - started, 1)
        figures["predict_attempts"] = attempts
        vocabulary = claimed_vocabulary(connection, env["TAGCLIP_QUEUE"])
        while vocabulary is not None and claims.remaining(vocabulary) not in (0, None):
            time.sleep(1.0)
        figures["build_done_s"] = round(time.perf_counter() - started, 1)
        if before_kill is not None:
            after = saved_columns(cache)
            figures["columns_at_kill"] = len(before_kill)
            figures["columns_built_again"] = sum(1 for path, mtime in before_kill.items() if after.get(path) != mtime)
        figures["columns"] = len(saved_columns(cache))
    finally:
        backend.stop()
        for worker in workers:
            worker.stop()
    return figures


def run(args: argparse.Namespace, work: Path) -> dict:
    checkpoint = write_random_checkpoint(work / "clip.pt", SHAPES[args.shape], seed=0)
    logs = work / "logs"
    logs.mkdir()
    redis, redis_url = start_queue_redis(logs)
    env = queue_env(
        redis_url, checkpoint, WORKER_HEARTBEAT="1", PREDICT_TIMEOUT=str(args.predict_timeout), LOG_LEVEL="INFO"
    )
    images = work / "images"
    images.mkdir()
    try:
        with serve_directory(images) as server:
            args.image_url = server.put("photo.png", png_bytes(224, 224, seed=0))
            runs = {name: scenario(args, env, work, name, kill=name == "killed") for name in args.runs}
    finally:
        redis.stop()
        if args.logs:
            shutil.copytree(logs, args.logs, dirs_exist_ok=True)
    return {"shape": args.shape, "templates": len(TAGCLIP_TEMPLATES), "predict_timeout_s": args.predict_timeout, **runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="vit-b-16", help="random-weight CLIP shape")
    parser.add_argument("--runs", nargs="+", choices=("cold", "killed"), default=["cold", "killed"])
    parser.add_argument("--predict-timeout", type=int, default=80, help="PREDICT_TIMEOUT of the backend (s)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between /predict attempts")
    parser.add_argument("--logs", help="keep the processes' logs here")
    parser.add_argument("--json", help="also write the figures here")
    return run_and_report(parser.parse_args(), run, "tagclip-vocab-")


if __name__ == "__main__":
    sys.exit(main())
