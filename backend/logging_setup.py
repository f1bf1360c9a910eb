"""Logging of the backend's processes (`tagclip serve`, `tagclip worker`): one format, and every record scrubbed
of URL credentials and signed query strings (backend.redaction) before it is written."""

from __future__ import annotations

import logging

from .redaction import install_log_scrubbing

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    install_log_scrubbing()
