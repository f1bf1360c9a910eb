"""The plain-JSON payloads that cross the RQ queues, built by the web process or the planner and checked by the
workers: `predict` (a /predict chunk: tasks, controls, source) and `bulk` (a bulk pre-annotation chunk)."""
