"""Bulk pre-annotation of whole Label Studio projects: list tasks, queue chunks on RQ, let workers write
predictions back, exactly once per (project, model_version, task), with job state in Redis.

    planner.py      list a project's tasks (paged by id) and enqueue chunks; attach to a running job; retry failed
    state.py        a bulk job's state in Redis (tasks, chunks, done, failed, timings); its states (BulkState)
    status.py       a job's JSON status (read only: rate, ETA, chunks by their RQ status)
    maintenance.py  the explicit pass that settles ended chunks, re-queues abandoned ones, closes ended jobs
    cancel.py       cancel a job: take no more tasks, drop waiting chunks, let running ones finish
    ledger.py       the exactly-once protocol: per-task write claims in Redis, checked against Label Studio
    method.py       which write-back method a chunk uses ("auto": the cheaper so far)
    timing.py       a claim's lease, how long a sent write stays in doubt, a chunk's RQ timeout (from the settings)
    backoff.py      jittered exponential waits; Label Studio calls retried while they fail for a reason that may pass
    verify.py       a job's final check, paged: one prediction of the version per task, duplicates removed, lost
                    ones reported (run by a worker: worker.verify)

The chunk payload is backend.contracts.bulk; what a worker does with a chunk is worker.bulk and
worker.writeback.
"""
