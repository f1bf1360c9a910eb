"""Bulk pre-annotation of whole Label Studio projects: list tasks, queue chunks on RQ, let workers write
predictions back, exactly once per (project, model_version, task), with job state in Redis.

    planner.py   list a project's tasks (paged by id) and enqueue chunks; attach to a running job; retry failed
    version.py   the model_version /setup reports for a project (same code path as /setup)
    payload.py   the chunk payload: plain JSON across the queue
    state.py     a bulk job's state in Redis (tasks, chunks, done, failed, timings)
    status.py    a job's JSON status (settles ended chunks, rate, ETA)
    cancel.py    cancel a job: take no more tasks, drop waiting chunks, let running ones finish
    ledger.py    the exactly-once protocol: per-task write claims in Redis, checked against Label Studio
    chunk.py     what a worker does with a chunk (no torch: prediction is passed in by worker/bulk.py)
    writeback.py write predictions to Label Studio: the bulk import, or one POST per task
    verify.py    after a run: one prediction of the version per task, duplicates removed, lost ones reported
"""
