"""Opt-in scale test: a 10,000-task project pre-annotated by two workers through `tagclip preannotate`, with
one worker killed in the middle of a chunk and restarted, the command interrupted (Ctrl-C) and rerun, and a
final rerun that must write nothing: zero lost, zero duplicated predictions.

Run it alone (about half an hour on 2 CPU cores; it writes test-artifacts/integration/bulk_scale.json):

    TAGCLIP_SCALE_TEST=1 scripts/test.sh tests/integration/test_bulk_scale.py -m scale -s

TAGCLIP_SCALE_TASKS changes the size (default 10000). Figures are measurements, not assertions. With
fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short=true in the environment, Label Studio
runs with its lighter prediction import (bulk_scale-ls-import-flag.json).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from .bulk_helpers import (
    MemorySampler,
    active_job,
    assert_exactly_one,
    cli_env,
    elapsed_since,
    env_flag,
    forget_bulk_state,
    kill_worker_mid_chunk,
    make_project,
    parse_status,
    redis_pid,
    run_cli,
    start_cli,
    store_and_queue,
)
from .stack import wait_until, wait_workers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.scale,
    pytest.mark.skipif(not env_flag("TAGCLIP_SCALE_TEST"), reason="opt-in: set TAGCLIP_SCALE_TEST=1 (about 30 min)"),
]

N_TASKS = int(os.environ.get("TAGCLIP_SCALE_TASKS", "10000"))
# Tasks written one POST per task first, to measure that method on the same Label Studio.
SINGLE_TASKS = 300
# Label Studio's feature flag for the import path that recounts only the imported tasks (set it in the
# environment of this test to run Label Studio with it; README_bulk.md has both runs).
IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"


def run_watched(env, log_dir, name: str, memory: MemorySampler, *args: str) -> tuple[int, dict, str]:
    """The command as a child whose memory is sampled; returns (exit status, final status, its output)."""
    process = start_cli(env, log_dir, name, *args, "--quiet")
    memory.watch(name.replace("-", "_"), process.pid)
    code = process.wait(7200)
    output = (log_dir / f"{name}.log").read_text()
    return code, parse_status(output), output


def test_ten_thousand_tasks_exactly_once(label_studio, stack, redis_url, artifacts):
    figures: dict = {"tasks": N_TASKS, "workers": 2, "label_studio_import_flag": os.environ.get(IMPORT_FLAG, "")}
    started = time.monotonic()
    project = make_project(label_studio, "TagCLIP scale", N_TASKS, n_images=100, size=32)
    figures["setup_project_s"] = elapsed_since(started)
    names = ["s0", "s1"]
    for name in names:
        stack.start_worker(name)
    wait_workers(stack.url, 2, timeout=180)
    env = cli_env(stack.env, label_studio)
    store, queue = store_and_queue(redis_url, stack.queue_name)
    memory = MemorySampler(interval=2.0)
    memory.watch("label_studio", label_studio.process.popen.pid)
    memory.watch("redis_server", redis_pid(redis_url))
    memory.watch("backend", stack.backend.popen.pid)
    for worker in stack.workers:
        memory.watch(f"worker_{worker.name.rsplit('-', 1)[-1]}", worker.popen.pid)
    memory.start()

    # 1. One POST per task on the first SINGLE_TASKS tasks.
    t0 = time.monotonic()
    code, single, _ = run_cli(env, "--project", str(project.id), "--write", "single", "--max-tasks", str(SINGLE_TASKS))
    assert code == 0 and single["done"] == SINGLE_TASKS, single
    figures["single"] = {
        "tasks": SINGLE_TASKS,
        "seconds": elapsed_since(t0),
        "store_s_per_task": single["store_s_per_task"],
        "write_s_per_task": single["write_s_per_task"],
        "tasks_per_s": single["tasks_per_s"],
    }
    version = single["model_version"]

    # 2. The bulk import for the rest: interrupted twice, then resumed.
    t0 = time.monotonic()
    first = start_cli(env, artifacts, f"preannotate-scale-{project.id}", "--project", str(project.id))
    memory.watch("cli_first_run", first.pid)
    job = active_job(store, label_studio.url, project.id, version, timeout=300)
    remaining = N_TASKS - SINGLE_TASKS
    wait_until(lambda: store.counts(job)["done"] >= remaining // 4, 3600, interval=2, what="a quarter done")
    victim, killed_chunk = kill_worker_mid_chunk(queue, stack.workers)
    figures["worker_killed_at_done"] = store.counts(job)["done"]
    restarted = stack.start_worker(f"{victim.name.rsplit('-', 1)[-1]}-restarted")
    memory.watch("worker_restarted", restarted.popen.pid)
    wait_until(lambda: store.counts(job)["done"] >= remaining // 2, 3600, interval=2, what="half done")
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 130
    figures["command_interrupted_at_done"] = store.counts(job)["done"]
    t_rerun = time.monotonic()
    code, status, stdout = run_watched(env, artifacts, "preannotate-scale-rerun", memory, "--project", str(project.id))
    assert "attached to running job " + job in stdout
    assert code == 0 and status["state"] == "done" and status["failed"] == 0, status
    assert status["verify"]["duplicates_removed"] == 0 and status["verify"]["missing"] == []
    figures["import"] = {
        "tasks": remaining,
        "seconds": elapsed_since(t0),
        "rerun_seconds": elapsed_since(t_rerun),
        "tasks_per_s_overall": round(remaining / (time.monotonic() - t0), 2),
        "tasks_per_s_last_minute": status["tasks_per_s"],
        "store_s_per_task": status["store_s_per_task"],
        "write_s_per_task": status["write_s_per_task"],
        "predict_s_total": status["predict_s"],
        "methods": status["methods"],
        "chunks": status["chunks"],
        "recovered": status["recovered"],
    }

    # 3. Once more: nothing to do, nothing written.
    t0 = time.monotonic()
    code, again, stdout = run_cli(env, "--project", str(project.id), timeout=1800)
    assert code == 0 and "enqueued 0 task(s)" in stdout and again["total"] == 0 and again["written"] == 0
    figures["rerun_nothing_to_do_s"] = elapsed_since(t0)

    t0 = time.monotonic()
    assert_exactly_one(label_studio, project, version, project.tasks)
    figures["check_all_predictions_s"] = elapsed_since(t0)
    figures["peak_rss_mb"] = memory.stop()
    figures["total_s"] = elapsed_since(started)
    suffix = "-ls-import-flag" if figures["label_studio_import_flag"] else ""
    (artifacts / f"bulk_scale{suffix}.json").write_text(json.dumps(figures, indent=1))
    forget_bulk_state(redis_url, stack.queue_name)
    print(json.dumps(figures, indent=1))
