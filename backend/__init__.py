"""Label Studio ML backend for TagCLIP (Flask 3). Never imports torch or tagclip_core.

The model runs behind a queue: `worker.jobs.predict_chunk` is reached by its dotted path, either
through RQ (REDIS_URL set) or in-process ("embedded" mode, REDIS_URL unset).
"""
