"""Secrets out of text. Presigned image URLs carry their signature in the query string, and a URL may carry
`user:password@`; exception texts (requests puts the whole URL into its messages) bring both into error
messages, log lines and stored failure reasons. `scrub` removes them from any text; `ScrubSecretsFilter`
applies it to every log record of a process.
"""

from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"

# scheme://user:password@  (the userinfo part of any URL)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@'\"<>]*@")
# a query string after a path or a host, with or without a scheme (requests writes "with url: /a?sig=...")
_QUERY = re.compile(r"(?i)((?:[a-z][a-z0-9+.-]*://[^\s/?#'\"<>]*)?/[^\s?#'\"<>]*|://[^\s/?#'\"<>]+)\?[^\s#'\"<>)]+")


def scrub(text: str) -> str:
    """`text` without URL credentials and query strings (each query becomes `?<redacted>`)."""
    text = _USERINFO.sub(r"\1", text)
    return _QUERY.sub(lambda m: f"{m.group(1)}?{REDACTED}", text)


class ScrubSecretsFilter(logging.Filter):
    """Scrubs each record's final message (arguments included) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def install_log_scrubbing(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of `logger` (default: the root logger), once."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, ScrubSecretsFilter) for f in handler.filters):
            handler.addFilter(ScrubSecretsFilter())
