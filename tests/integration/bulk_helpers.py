"""Shared steps of the bulk pre-annotation tests (the default suite's and the opt-in 10,000-task scale test):
projects of many small tasks, the `tagclip preannotate` command as a real subprocess, killing a worker in
the middle of a chunk, the exactly-once check against Label Studio, and process memory sampling."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.bulk.state import BulkStore
from backend.keys import ProjectRef, RedisKeys

from .stack import ROOT, LabelStudio, Process, png_bytes, wait_until

LABELS = ["Cat", "Dog", "Car", "Tree"]
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    + "".join(f'<Choice value="{x}"/>' for x in LABELS)
    + "</Choices></View>"
)
CORRUPT = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
IMPORT_BATCH = 2000


@dataclass
class BulkProject:
    id: int
    tasks: list[int]
    corrupt: list[int]
    good_urls: list[str] = field(default_factory=list)

    @property
    def good(self) -> list[int]:
        return [t for t in self.tasks if t not in self.corrupt]


def make_project(
    studio: LabelStudio, title: str, n_tasks: int, n_images: int = 6, size: int = 48, n_corrupt: int = 0
) -> BulkProject:
    """A project of `n_tasks` tasks: `n_images` uploaded PNGs (+ corrupt uploads), the rest JSON tasks that
    reference the uploaded images in turn (Label Studio serves them, with auth, like any upload)."""
    project = studio.create_project(title, CONFIG)
    files = [(f"img{i:03d}.png", png_bytes(size, size, seed=500 + i)) for i in range(n_images)]
    files += [(f"corrupt{i}.png", CORRUPT) for i in range(n_corrupt)]
    payload = [(f"file{i}", (name, io.BytesIO(data), "image/png")) for i, (name, data) in enumerate(files)]
    studio.api("POST", f"/api/projects/{project}/import", files=payload)
    uploaded = studio.api("GET", f"/api/tasks?project={project}&page_size=1000&fields=task_only").json()["tasks"]
    corrupt = [t["id"] for t in uploaded if "corrupt" in t["data"]["image"]]
    good_urls = sorted(t["data"]["image"] for t in uploaded if t["id"] not in corrupt)
    remaining = n_tasks - len(uploaded)
    for start in range(0, remaining, IMPORT_BATCH):
        batch = [
            {"data": {"image": good_urls[(start + i) % len(good_urls)]}}
            for i in range(min(IMPORT_BATCH, remaining - start))
        ]
        studio.api("POST", f"/api/projects/{project}/import", json=batch)
    tasks = all_task_ids(studio, project)
    assert len(tasks) == n_tasks, (len(tasks), n_tasks)
    return BulkProject(project, tasks, corrupt, good_urls)


def all_task_ids(studio: LabelStudio, project: int) -> list[int]:
    ids, page = [], 1
    while True:
        answer = studio.api(
            "GET", f"/api/tasks?project={project}&page={page}&page_size=1000&fields=task_only", expect=(200, 404)
        )
        tasks = answer.json().get("tasks", []) if answer.status_code == 200 else []
        if not tasks:
            return sorted(ids)
        ids += [t["id"] for t in tasks]
        page += 1


def cli_env(env: Mapping[str, str], studio: LabelStudio) -> dict[str, str]:
    return {**env, "LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token}


def preannotate_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagclip_cli.main", "preannotate", *args]


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 600) -> tuple[int, dict, str]:
    """Run `tagclip preannotate ... --json --quiet`; returns (exit status, final status JSON, stdout)."""
    result = subprocess.run(
        preannotate_argv(*args, "--json", "--quiet"),
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, parse_status(result.stdout, result.stderr), result.stdout


def run_cli_releasing(
    env: Mapping[str, str], marker: str, release: Callable[[], None], *args: str, timeout: float = 600
) -> tuple[int, dict, str]:
    """`run_cli`, calling `release` as soon as the command's stdout shows a line containing `marker` (or the
    command ended without one): for a step that must happen after the command reached a point."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            preannotate_argv(*args, "--json", "--quiet"),
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        seen = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                seen.append(line)
                if marker in line:
                    break
        finally:
            release()
        rest, _ = process.communicate(timeout=timeout)
        errors.seek(0)
        stdout = "".join(seen) + rest
        return process.returncode, parse_status(stdout, errors.read()), stdout


def start_cli(env: Mapping[str, str], log_dir: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        preannotate_argv(*args, "--json"),
        env=dict(env),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def parse_status(stdout: str, stderr: str = "") -> dict:
    """The status JSON `--json` prints last (indented, so its opening brace is a line of its own)."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line == "{":
            return json.loads("\n".join(lines[i:]))
    raise AssertionError(f"no status JSON in the output:\n{stdout[-2000:]}\n{stderr[-2000:]}")


def store_and_queue(redis_url: str, queue_name: str) -> tuple[BulkStore, Queue]:
    redis = Redis.from_url(redis_url)
    keys = RedisKeys(queue_name)
    return BulkStore(redis, keys), Queue(keys.bulk_queue, connection=redis, serializer=JSONSerializer)


def forget_bulk_state(redis_url: str, queue_name: str) -> None:
    """Delete a test queue's bulk job state (kept 30 days otherwise)."""
    redis = Redis.from_url(redis_url)
    for key in redis.scan_iter(f"{RedisKeys(queue_name).prefix}:bulk:*", count=1000):
        redis.delete(key)


def active_job(store: BulkStore, studio_url: str, project: int, version: str, timeout: float = 120) -> str:
    ref = ProjectRef.of(studio_url, project)
    return wait_until(lambda: store.active(ref, version), timeout, interval=0.1, what="the bulk job")


def kill_worker_mid_chunk(queue: Queue, workers: Sequence[Process], timeout: float = 120) -> tuple[Process, str]:
    """SIGKILL the worker running a bulk chunk right now; returns it and the chunk's RQ job id."""
    by_name = {w.name: w for w in workers if w.popen.poll() is None}

    def running() -> tuple[Process, str] | None:
        for job_id in queue.started_job_registry.get_job_ids():
            name = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer).worker_name
            if name in by_name:
                return by_name[name], job_id
        return None

    victim, job_id = wait_until(running, timeout, interval=0.02, what="a chunk running on a worker")
    victim.kill9()
    return victim, job_id


def predictions_by_task(studio: LabelStudio, project: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for prediction in studio.predictions(project):
        out[prediction["task"]].append(prediction)
    return out


def assert_exactly_one(studio: LabelStudio, project: BulkProject, version: str, expect: Sequence[int]) -> dict:
    """Every task in `expect` has exactly one prediction, of `version`, valid for the config, with per-label
    scores; no other task of the project has any. Returns the predictions by task."""
    stored = predictions_by_task(studio, project.id)
    interface = LabelInterface(CONFIG)
    lost = sorted(set(expect) - set(stored))
    duplicated = sorted(t for t, p in stored.items() if len(p) > 1)
    extra = sorted(set(stored) - set(expect))
    assert not lost and not duplicated and not extra, (
        f"lost {lost[:20]}, duplicated {duplicated[:20]}, extra {extra[:20]}"
    )
    for task in expect:
        (prediction,) = stored[task]
        assert prediction["model_version"] == version
        assert interface.validate_prediction({"result": prediction["result"]}, return_errors=True) == []
        region = prediction["result"][0]
        assert set(region["label_scores"]) == set(LABELS) and region["value"]["choices"]
    return stored


class MemorySampler:
    """Peak resident memory (VmRSS, sampled) of processes by name, read from /proc."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        return {k: round(v, 1) for k, v in sorted(self.peak_mb.items())}

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        for name, pid in list(self.pids.items()):
            rss = rss_mb(pid)
            if rss is not None:
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), rss)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its children (a Label Studio or gunicorn process tree), MiB."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total or None


def _children(pid: int) -> list[int]:
    try:
        direct = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return direct + [c for d in direct for c in _children(d)]


def redis_pid(redis_url: str) -> int:
    return int(Redis.from_url(redis_url).info("server")["process_id"])


def elapsed_since(started: float) -> float:
    return round(time.monotonic() - started, 2)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
