"""RQ worker side of tagclip-studio: loads the engine once per process, runs `jobs.predict_chunk`."""
