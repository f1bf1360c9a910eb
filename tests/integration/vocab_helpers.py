"""What the big-vocabulary test and benchmark share: the label config of N new labels, the columns a worker cache
holds, and the one vocabulary claimed on a queue."""

from __future__ import annotations

from pathlib import Path

from redis import Redis

from backend.keys import RedisKeys


def label_config(labels: int) -> str:
    """One Choices control of `labels` labels ("object kind 0", ...): new to any cache."""
    choices = "".join(f'<Choice value="object kind {i}"/>' for i in range(labels))
    return (
        '<View><Image name="image" value="$image"/>'
        f'<Choices name="tags" toName="image" choice="multiple">{choices}</Choices></View>'
    )


def saved_columns(cache: Path) -> dict[Path, int]:
    """The columns saved in a worker cache, with their modification times (a column built again is a new file)."""
    return {path: path.stat().st_mtime_ns for path in (cache / "text").rglob("*.pt")} if cache.exists() else {}


def claimed_vocabulary(redis: Redis, queue: str) -> str | None:
    """The id of the one vocabulary claimed on a queue; None when none is."""
    prefix = RedisKeys(queue).vocabulary("")
    keys = [key.decode() for key in redis.scan_iter(prefix + "*")]
    assert len(keys) <= 1, keys
    return keys[0].removeprefix(prefix) if keys else None
