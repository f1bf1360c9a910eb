"""The per-project memory of reviewed examples (docs/learning.md): CLIP image embeddings of reviewed tasks with
the labels their reviewers submitted, and what it does to a control's scores and tags.

    scoring.py       the numerics (numpy only): affinity, vote, blend, leave-one-out calibration, cross-validation
    examples.py      reviewed examples and the arrays scoring reads, control fingerprints
    store.py         MemoryStore: what every store does (generation, examples, calibrations)
    redis_store.py   queue mode: Redis, compact float16 vectors
    sqlite_store.py  embedded mode: one SQLite file under the cache dir
    events.py        Label Studio's webhook bodies -> learning events
"""
