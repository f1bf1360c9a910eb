"""`tagclip serve`: the Label Studio ML backend under gunicorn (gthread workers, so /health and /setup
answer within Label Studio's 1 s and 3 s while a long /predict waits on its jobs).

Settings come from the environment (see backend/settings.py); the options here override a few.
"""

from __future__ import annotations

import argparse
import dataclasses

from .errors import UsageError

# Gunicorn kills a worker silent for this much longer than the longest /predict.
_TIMEOUT_MARGIN_S = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (PORT, default 9090)")
    parser.add_argument("--threads", type=int, help="request threads per process (SERVER_THREADS, default 64)")
    parser.add_argument("--workers", type=int, help="gunicorn processes, >1 needs REDIS_URL (SERVER_WORKERS)")
    parser.add_argument("--log-level", help="LOG_LEVEL (default INFO)")


def run(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from backend.errors import SettingsError
    from backend.settings import Settings

    try:
        settings = Settings.from_env()
        overrides = {
            "host": args.host,
            "port": args.port,
            "server_threads": args.threads,
            "server_workers": args.workers,
            "log_level": args.log_level,
        }
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as e:
        raise UsageError(str(e)) from e

    class BackendApplication(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.host}:{settings.port}",
                "worker_class": "gthread",
                "workers": settings.server_workers,
                "threads": settings.server_threads,
                "timeout": int(settings.predict_timeout) + _TIMEOUT_MARGIN_S,
                "graceful_timeout": int(settings.predict_timeout) + 5,
                "keepalive": 5,
                "loglevel": settings.log_level.lower(),
                "accesslog": "-" if settings.log_level.upper() == "DEBUG" else None,
                "post_worker_init": _warm_up,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from backend.logging_setup import configure_logging
            from backend.web.app import create_app

            configure_logging(settings.log_level)
            return create_app(settings)

    BackendApplication().run()
    return 0


def _warm_up(worker) -> None:
    """Start loading the model (embedded mode) and hashing the weights as soon as the process is up, not at the
    first request."""
    from backend.web.app import warm_up

    warm_up(worker.wsgi)
