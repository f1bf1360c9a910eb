"""Memory benchmark of a worker (not a test): peak RSS of one `tagclip worker` predicting one chunk of big photos
with BrushLabels masks.

Starts the real parts on this machine (a redis-server of its own, the backend under `tagclip serve` in queue
mode, ONE `tagclip worker` on a random-weight checkpoint of the real ViT-B/16 shape, a local HTTP server with the
photos), sends one /predict of PHOTOS tasks with CHUNK_SIZE=PHOTOS (so the worker gets them as one chunk), and
reads the worker's peak RSS (VmHWM) before and after the chunk. Every label gets a mask
(model_score_threshold="0"), so the masks' cost is the most a chunk can have.

    .venv/bin/python bench/bench_chunk_memory.py                           # 16 photos of 4000x3000 (12 MP)
    .venv/bin/python bench/bench_chunk_memory.py --photos 4 --json out.json
    .venv/bin/python bench/bench_chunk_memory.py --images-in-memory 16     # every photo of the chunk at once
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.queue_stack import queue_env, run_and_report, start_queue_redis  # noqa: E402
from tagclip_core.random_weights import VIT_B_16, write_random_checkpoint  # noqa: E402
from tests.fixtures.http_server import serve_directory  # noqa: E402
from tests.integration.stack import start_backend, start_worker, wait_workers  # noqa: E402

QUEUE = "tagclip"  # the backend's default queue name
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="mask" toName="image" model_score_threshold="0">'
    '<Label value="Cat"/><Label value="Dog"/><Label value="Car"/></BrushLabels></View>'
)


def photo_jpeg(height: int, width: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth gradients with some texture, so it compresses as photos do (a few MB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    texture = rng.integers(0, 40, size=(-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    texture = np.kron(texture, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    pixels = np.clip(base + texture, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def predict(url: str, tasks: list[dict], queue: Queue) -> list[dict]:
    """Send one /predict and wait for its jobs to end (the answer comes within PREDICT_TIMEOUT, < 100 s; the jobs
    go on until they are done); returns their task entries."""
    earlier = set(FinishedJobRegistry(queue=queue).get_job_ids())
    requests.post(url + "/predict", json={"tasks": tasks, "label_config": CONFIG}, timeout=600).raise_for_status()
    return wait_chunk_done(queue, earlier)


def wait_chunk_done(queue: Queue, earlier: set[str]) -> list[dict]:
    """Wait until the queue has no job waiting or running; returns the task entries of the jobs finished since
    (not in `earlier`)."""
    started = StartedJobRegistry(queue=queue)
    while len(queue) or started.count:
        time.sleep(1)
    finished = FinishedJobRegistry(queue=queue)
    tasks = []
    for job_id in set(finished.get_job_ids()) - earlier:
        result = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer).return_value()
        tasks.extend(result["tasks"] if result else [])
    return tasks


def run(args: argparse.Namespace, work: Path) -> dict:
    checkpoint = write_random_checkpoint(work / "vit-b-16.pt", VIT_B_16, seed=0)
    logs = Path(args.logs) if args.logs else work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis, redis_url = start_queue_redis(logs)
    env = queue_env(
        redis_url,
        checkpoint,
        TAGCLIP_CACHE_DIR=str(work / "cache"),
        CHUNK_SIZE=str(args.photos),
        PREDICT_TIMEOUT="99",
        JOB_TIMEOUT="7200",
        **({"IMAGES_IN_MEMORY": str(args.images_in_memory)} if args.images_in_memory else {}),
    )
    worker = start_worker(env, logs, "bench-worker")
    backend, url = start_backend(env, logs)
    images = work / "images"
    images.mkdir()
    try:
        with serve_directory(images) as server:
            height, width = args.size
            refs = [server.put(f"{i}.jpg", photo_jpeg(height, width, seed=i)) for i in range(args.photos)]
            wait_workers(url, 1, timeout=600)
            queue = Queue(QUEUE, connection=Redis.from_url(redis_url), serializer=JSONSerializer)
            # Warm-up on one small image (the text classifier), so the figure is the chunk's own.
            small = server.put("small.jpg", photo_jpeg(240, 320, seed=99))
            predict(url, [{"id": 0, "data": {"image": small}}], queue)
            before = memory_kb(worker.popen.pid)
            started = time.perf_counter()
            outputs = predict(url, [{"id": i + 1, "data": {"image": ref}} for i, ref in enumerate(refs)], queue)
            seconds = time.perf_counter() - started
            after = memory_kb(worker.popen.pid)
    finally:
        backend.stop()
        worker.stop()
        redis.stop()
    return {
        "photos": args.photos,
        "photo_size": f"{args.size[1]}x{args.size[0]}",
        "images_in_memory": args.images_in_memory or "default",
        "tasks_predicted": sum(1 for task in outputs if "outputs" in task),
        "masks": sum(
            len(o.get("masks", {}).get("masks", [])) for task in outputs for o in task.get("outputs", {}).values()
        ),  # fmt: skip
        "chunk_seconds": round(seconds, 1),
        "worker_rss_before_chunk_mb": round(before["VmRSS"] / 1024),
        "worker_peak_rss_before_chunk_mb": round(before["VmHWM"] / 1024),
        "worker_peak_rss_mb": round(after["VmHWM"] / 1024),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=16, help="photos in the chunk")
    parser.add_argument("--size", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    parser.add_argument("--images-in-memory", type=int, help="IMAGES_IN_MEMORY (default: the worker's)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--logs", help="keep the processes' logs in this folder")
    return run_and_report(parser.parse_args(), run, "tagclip-chunk-memory-")


if __name__ == "__main__":
    sys.exit(main())
