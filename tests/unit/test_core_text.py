"""The prompt-ensemble text classifier: equal to full-context encoding, cached in memory and on disk."""

from __future__ import annotations

import pytest
import torch

from tagclip_core.config import ModelSpec, TextConfig
from tagclip_core.model import load_clip
from tagclip_core.prompts import BACKGROUND_COCO, BACKGROUND_VOC, TAGCLIP_TEMPLATES, resolve_background
from tagclip_core.text import TextClassifierCache, encode_prompts

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def clip(tiny_checkpoint):
    return load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))


def test_templates_are_open_clips_80_then_five_scene_templates():
    assert len(TAGCLIP_TEMPLATES) == 85
    assert TAGCLIP_TEMPLATES[0] == "a bad photo of a {}."
    assert TAGCLIP_TEMPLATES[79] == "a tattoo of the {}."
    assert TAGCLIP_TEMPLATES[80:] == (
        "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
        "this is the {} in the scene.", "this is one {} in the scene.",
    )  # fmt: skip


def test_background_sets():
    assert len(BACKGROUND_VOC) == 25 and len(BACKGROUND_COCO) == 23
    assert "keyboard" not in BACKGROUND_COCO and "sign" not in BACKGROUND_COCO
    assert resolve_background("none") == ()
    assert resolve_background(" sky, sea ,") == ("sky", "sea")
    assert resolve_background(["grass"]) == ("grass",)


@torch.inference_mode()
def test_truncated_context_equals_full_77_token_encoding(clip):
    texts = [t.format(name) for name in ("cat", "a very long and unusual potted plant name") for t in TAGCLIP_TEMPLATES]
    tokens = clip.tokenizer(texts)
    expected = clip.model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(encode_prompts(clip.model, tokens, batch_size=37), expected, atol=1e-6, rtol=1e-5)


@torch.inference_mode()
def test_columns_are_the_normalised_mean_of_normalised_template_embeddings(clip):
    cache = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, TextConfig(), cache_dir=None)
    columns = cache.columns(["dog", "cat", "dog"])
    embeddings = clip.model.encode_text(clip.tokenizer([t.format("cat") for t in TAGCLIP_TEMPLATES]), normalize=True)
    expected = embeddings.mean(0) / embeddings.mean(0).norm()
    torch.testing.assert_close(columns[1], expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(columns[0], columns[2])


class _BrokenTextTower(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the text tower ran although the classifier was cached")


@torch.inference_mode()
def test_disk_cache_serves_a_fresh_process_without_running_the_text_tower(clip, tiny_checkpoint, tmp_path):
    built = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, TextConfig(), tmp_path).columns(["cow"])
    broken = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))
    broken.model.transformer = _BrokenTextTower()
    cached = TextClassifierCache(broken.model, broken.tokenizer, clip.model_id, TextConfig(), tmp_path).columns(["cow"])
    assert torch.equal(built, cached)
    other_templates = TextConfig(templates=("a photo of a {}.",))
    with pytest.raises(AssertionError, match="text tower ran"):
        TextClassifierCache(broken.model, broken.tokenizer, clip.model_id, other_templates, tmp_path).columns(["cow"])


def test_torn_cache_file_is_rebuilt(clip, tmp_path):
    cache = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, TextConfig(), tmp_path)
    with torch.inference_mode():
        first = cache.columns(["horse"])
    for path in tmp_path.rglob("*.pt"):
        path.write_bytes(b"torn")
    fresh = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, TextConfig(), tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(fresh.columns(["horse"]), first)


def test_the_in_memory_columns_are_bounded(tmp_path):
    """At most max_cached_prompts columns stay in memory; the least recently used go first, and a classifier
    just set keeps all of its own."""
    import dataclasses

    from tagclip_core.random_weights import TINY_VIT_B_16, write_random_checkpoint

    checkpoint = write_random_checkpoint(tmp_path / "tiny.pt", TINY_VIT_B_16, seed=0)
    clip = load_clip(ModelSpec(checkpoint=str(checkpoint)))
    config = dataclasses.replace(TextConfig(templates=("a photo of a {}.",)), max_cached_prompts=3, disk_cache=False)
    cache = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, config, None)
    cache.columns(["cat", "dog"])
    cache.columns(["car", "cat"])  # cat is used again: dog is now the least recent
    cache.columns(["tree"])
    assert list(cache._memory) == ["car", "cat", "tree"]


class _InterruptedTextTower(torch.nn.Module):
    """The real text tower, counting its forwards; it raises at forward number `stop_at` (a job timeout, a kill)."""

    def __init__(self, tower: torch.nn.Module, stop_at: int | None = None):
        super().__init__()
        self.tower = tower
        self.stop_at = stop_at
        self.forwards = 0

    def forward(self, *args, **kwargs):
        self.forwards += 1
        if self.forwards == self.stop_at:
            raise KeyboardInterrupt("interrupted mid-build")
        return self.tower(*args, **kwargs)


PROMPTS = [f"{word} {n}" for n in range(3) for word in ("cat", "a very long and unusual potted plant name", "dog")]


@torch.inference_mode()
def test_a_build_interrupted_halfway_then_resumed_equals_a_cold_build_bit_for_bit(tiny_checkpoint, tmp_path):
    """Each column is saved as it is built, one prompt per forward: an interrupted build keeps what it did, the
    resumed one runs the text tower only for the rest, and every column equals a cold build's exactly (also one
    built in another order, with other prompts around it)."""
    cold = TextClassifierCache(*_parts(tiny_checkpoint), TextConfig(), tmp_path / "cold").columns(PROMPTS)

    clip = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))
    tower = _InterruptedTextTower(clip.model.transformer, stop_at=len(PROMPTS) // 2 + 1)
    clip.model.transformer = tower
    with pytest.raises(KeyboardInterrupt):
        TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, TextConfig(), tmp_path / "warm").columns(PROMPTS)
    assert len(list((tmp_path / "warm").rglob("*.pt"))) == len(PROMPTS) // 2

    fresh = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))
    tower = _InterruptedTextTower(fresh.model.transformer)
    fresh.model.transformer = tower
    resumed = TextClassifierCache(fresh.model, fresh.tokenizer, fresh.model_id, TextConfig(), tmp_path / "warm")
    assert torch.equal(resumed.columns(PROMPTS), cold)
    assert tower.forwards == len(PROMPTS) - len(PROMPTS) // 2

    shuffled = ["zebra", *reversed(PROMPTS)]
    other = TextClassifierCache(*_parts(tiny_checkpoint), TextConfig(), tmp_path / "other").columns(shuffled)
    assert torch.equal(other[1:].flip(0), cold)


def _parts(checkpoint):
    clip = load_clip(ModelSpec(checkpoint=str(checkpoint)))
    return clip.model, clip.tokenizer, clip.model_id
