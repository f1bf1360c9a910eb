"""The `tagclip tag` loop: decode, predict in small batches, write one JSON line per image.

A file that cannot be decoded, or an image the engine fails on, gets an error line and the run goes on:
when a batch's prediction raises, its images are retried one by one so that only the bad one fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from PIL import Image
from tqdm import tqdm

from tagclip_core.errors import ImageLoadError
from tagclip_core.images import load_image
from tagclip_core.predictor import predict_each
from tagclip_core.types import PredictionFailure

from .records import error_record, result_record, write_record


class Prediction(Protocol):
    tags: Sequence[str]

    def score_dict(self) -> dict[str, float]: ...


Predict = Callable[[list[Image.Image]], Sequence[Prediction]]


@dataclass(frozen=True)
class TagSummary:
    images: int
    errors: int

    def line(self) -> str:
        return f"{self.images} images, {self.errors} errors"


def tag_files(
    paths: Sequence[str],
    predict: Predict,
    out: TextIO,
    batch_size: int,
    load: Callable[[str], Image.Image] = load_image,
    progress: bool | None = None,
) -> TagSummary:
    """Tag `paths` in batches of `batch_size`, writing a JSON line per path in order; progress on stderr
    (progress=None: only when stderr is a terminal)."""
    errors = 0
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=None if progress is None else not progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            for record in tag_batch(batch, predict, load):
                errors += record["error"] is not None
                write_record(out, record)
            out.flush()
            bar.update(len(batch))
    return TagSummary(images=len(paths), errors=errors)


def tag_batch(paths: Sequence[str], predict: Predict, load: Callable[[str], Image.Image]) -> list[dict[str, Any]]:
    """One record per path, in order."""
    decoded: dict[int, Image.Image] = {}
    records: dict[int, dict[str, Any]] = {}
    for index, path in enumerate(paths):
        try:
            decoded[index] = load(path)
        except ImageLoadError as error:
            records[index] = error_record(path, str(error))
    outcomes = predict_each(predict, list(decoded.values()))
    for index, outcome in zip(decoded, outcomes, strict=True):
        path = paths[index]
        records[index] = (
            error_record(path, f"prediction failed: {outcome}")
            if isinstance(outcome, PredictionFailure)
            else result_record(path, outcome.score_dict(), outcome.tags)
        )
    return [records[index] for index in range(len(paths))]
