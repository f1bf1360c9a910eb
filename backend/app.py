"""Moved to `backend.web.app`; re-exported here so `from backend.app import create_app` keeps working."""

from .web.app import create_app

__all__ = ["create_app"]
