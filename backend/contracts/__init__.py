"""The plain-JSON payloads that cross the RQ queues, built by the web process or the planner and checked by the
workers: `predict` (a /predict chunk: tasks, controls, source), `bulk` (a bulk pre-annotation chunk), `learn`
(the memory's learning jobs), `vocab` (part of a vocabulary's text classifier, announced by /setup), and
`source` (how a payload names its Label Studio and key).

JOB_FUNCTIONS lists, by dotted path, every function a worker runs: a job naming anything else is refused
(worker.jobclass), so write access to Redis is not a way to run code in the workers.
"""

from __future__ import annotations

from .bulk import JOB_FUNCTION as BULK_JOB_FUNCTION
from .bulk import VERIFY_FUNCTION as BULK_VERIFY_FUNCTION
from .learn import LEARN_JOB_FUNCTIONS
from .predict import JOB_FUNCTION as PREDICT_JOB_FUNCTION
from .vocab import JOB_FUNCTION as VOCAB_JOB_FUNCTION

JOB_FUNCTIONS = frozenset(
    {PREDICT_JOB_FUNCTION, BULK_JOB_FUNCTION, BULK_VERIFY_FUNCTION, VOCAB_JOB_FUNCTION, *LEARN_JOB_FUNCTIONS}
)
