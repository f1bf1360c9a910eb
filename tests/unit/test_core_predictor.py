"""The public engine: batching never changes results, classes map to prompt columns, odd inputs work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import tagclip_core.predictor as predictor_module
from tagclip_core import ClassListError, ClassSpec, EngineConfig, ModelSpec, TagCLIP, TagCLIPConfig
from tests.fixtures.images import PARITY_IMAGES, render, synthetic_pixels
from tests.fixtures.noise import autocast_perturbation, float32_perturbation, perturbed_clips
from tests.fixtures.parity import max_tokens, prediction_mismatches

pytestmark = pytest.mark.unit


def _image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(synthetic_pixels(height, width, seed))


IMAGES = [_image(96, 128, 11), _image(96, 128, 12), _image(70, 50, 13)]


def _assert_same(a, b) -> None:
    assert a.labels == b.labels and a.tags == b.tags and a.candidates == b.candidates
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(a.patch_scores, b.patch_scores, atol=1e-6, rtol=1e-5)


def test_prediction_fields(tiny_engine):
    (prediction,) = tiny_engine.predict([IMAGES[2]])
    assert prediction.input_size == (80, 64) and prediction.original_size == (70, 50)
    assert prediction.scores.shape == (20,) and prediction.scores.dtype == np.float32
    assert prediction.patch_scores.shape == (20, 5, 4)
    assert 1 <= len(prediction.tags) <= 20 and set(prediction.tags) <= set(prediction.labels)
    assert set(prediction.candidates) <= set(prediction.labels)
    assert prediction.score_dict()[prediction.tags[0]] == float(
        prediction.scores[prediction.labels.index(prediction.tags[0])]
    )


def test_several_images_per_call_equal_one_at_a_time(tiny_engine):
    together = tiny_engine.predict(IMAGES)
    for image, prediction in zip(IMAGES, together, strict=True):
        _assert_same(prediction, tiny_engine.predict([image])[0])


def test_batched_cpu_forwards_equal_one_image_at_a_time(tiny_checkpoint, tmp_path, monkeypatch):
    """cpu_batch_size > 1 runs the batched image forward a GPU runs; it equals batch 1 up to float32 rounding."""
    images = [_image(96, 128, seed) for seed in range(40, 45)] + [IMAGES[2]]
    spec = ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path))
    single = TagCLIP.load(spec)
    batched = TagCLIP.load(spec, EngineConfig(cpu_batch_size=4))
    tokens = max_tokens([[image.height, image.width] for image in images], single.clip.patch_size)
    shifted = [TagCLIP(clip) for clip in perturbed_clips(single.clip, float32_perturbation(single.clip, tokens))]
    for engine in (single, batched, *shifted):
        engine.set_classes(["cat", "dog", "person", "car"], background="voc")
    forwards = record_forward_batches(monkeypatch)
    got = batched.predict(images)
    assert sorted(forwards) == [1, 1, 4]  # five 96x128 images: 4 + 1; the 70x50 one alone
    rel = single.config.tagclip.tag_rel_threshold
    assert prediction_mismatches(single.predict(images), got, [e.predict(images) for e in shifted], rel) == []


def record_forward_batches(monkeypatch) -> list[int]:
    """The batch size of every image forward from now on (predictor.tagclip_forward wrapped)."""
    sizes: list[int] = []
    forward = predictor_module.tagclip_forward

    def recording(visual, pixels, *args):
        sizes.append(len(pixels))
        return forward(visual, pixels, *args)

    monkeypatch.setattr(predictor_module, "tagclip_forward", recording)
    return sizes


def test_batched_cwr_equals_one_crop_at_a_time(tiny_engine, monkeypatch):
    images = [render(spec) for spec in PARITY_IMAGES if spec.name in ("square224", "tall100x150", "rgba170x130")]
    batched = tiny_engine.predict(images)
    assert sum(len(p.candidates) for p in batched) >= 2, "the check needs several CWR crops"
    monkeypatch.setattr(predictor_module, "_CWR_BATCH", 1)
    for a, b in zip(batched, tiny_engine.predict(images), strict=True):
        _assert_same(a, b)


def test_array_input_equals_pil_input(tiny_engine):
    pil = IMAGES[0]
    _assert_same(tiny_engine.predict([np.asarray(pil)])[0], tiny_engine.predict([pil])[0])


def test_class_scores_are_the_max_over_their_prompts(tiny_checkpoint, tmp_path):
    engine = TagCLIP.load(ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path)))
    engine.set_classes(["cat", "dog", "bird"], background="voc")
    separate = engine.predict([IMAGES[0]])[0].score_dict()
    engine.set_classes([ClassSpec("pet", ("cat", "dog")), ClassSpec("bird")], background="voc")
    merged = engine.predict([IMAGES[0]])[0]
    assert merged.labels == ("pet", "bird")
    assert merged.score_dict()["pet"] == pytest.approx(max(separate["cat"], separate["dog"]), abs=1e-6)
    assert merged.score_dict()["bird"] == pytest.approx(separate["bird"], abs=1e-6)


def test_background_word_equal_to_a_prompt_is_dropped(tiny_checkpoint, tmp_path):
    engine = TagCLIP.load(ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path)))
    engine.set_classes(["tree", "sky", "cat"], background="voc")
    assert engine.predict([IMAGES[0]])[0].labels == ("tree", "sky", "cat")
    assert engine._classes.text.shape[0] == 3 + 23


def test_cwr_off_gives_the_local_scores(tiny_checkpoint, tmp_path):
    spec = ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path))
    engine = TagCLIP.load(spec, EngineConfig(tagclip=TagCLIPConfig(use_cwr=False)))
    engine.set_classes(["cat", "dog", "person"], background="voc")
    prediction = engine.predict([IMAGES[0]])[0]
    assert prediction.candidates == ()
    np.testing.assert_allclose(prediction.scores, prediction.patch_scores.reshape(3, -1).max(axis=1), rtol=1e-6)


def test_predict_before_set_classes_is_a_clear_error(tiny_checkpoint, tmp_path):
    engine = TagCLIP.load(ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path)))
    with pytest.raises(ClassListError, match="set_classes"):
        engine.predict([IMAGES[0]])


@pytest.mark.parametrize("classes", [[], ["cat", "cat"], [""]])
def test_bad_class_lists_are_refused(tiny_engine, classes):
    with pytest.raises(ClassListError):
        tiny_engine.set_classes(classes)


@pytest.mark.parametrize(("size", "expected_input"), [((1, 1), (32, 32)), ((10, 10), (32, 32)), ((16, 320), (16, 320))])
def test_tiny_and_one_patch_high_images_are_tagged(tiny_engine, size, expected_input):
    prediction = tiny_engine.predict([_image(*size, 21)])[0]
    assert prediction.input_size == expected_input
    assert np.isfinite(prediction.scores).all() and len(prediction.tags) >= 1


def test_long_side_cap_bounds_the_input(tiny_checkpoint, tmp_path):
    from tagclip_core import PreprocessConfig

    spec = ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path))
    engine = TagCLIP.load(spec, EngineConfig(preprocess=PreprocessConfig(max_side=64)))
    engine.set_classes(["cat", "dog"], background="none")
    prediction = engine.predict([_image(300, 400, 5)])[0]
    assert prediction.input_size == (48, 64) and prediction.original_size == (300, 400)


def test_exif_orientation_of_pil_input_is_applied(tiny_engine):
    image = _image(40, 80, 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.info["exif"] = exif.tobytes()
    rotated = Image.open(_save_jpeg_with_exif(image, exif))
    prediction = tiny_engine.predict([rotated])[0]
    assert prediction.original_size == (80, 40)


def _save_jpeg_with_exif(image: Image.Image, exif: Image.Exif):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    buffer.seek(0)
    return buffer


def test_a_76_patch_image_does_not_depend_on_the_image_before_it(tiny_engine):
    # 76 patches + the class token = 77 tokens: the reference then reuses the previous image's mask.
    image76 = _image(64, 304, 31)
    alone = tiny_engine.predict([image76])[0]
    after_other = tiny_engine.predict([_image(96, 128, 32), image76])[1]
    assert alone.input_size == (64, 304)
    _assert_same(alone, after_other)


def test_bf16_on_cpu_runs_under_autocast_close_to_fp32(tiny_checkpoint, tmp_path):
    """bf16 scores within the float32 engine's response to bf16 operand rounding, and the same tags wherever that
    cannot flip them (tests/fixtures/noise.py)."""
    images = [render(spec) for spec in PARITY_IMAGES]
    classes = ["cat", "dog", "person", "car"]
    spec = ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path))
    exact = TagCLIP.load(spec)
    fast = TagCLIP.load(dataclasses.replace(spec, precision="bf16"))
    shifted = [TagCLIP(clip) for clip in perturbed_clips(exact.clip, autocast_perturbation(torch.bfloat16))]
    for engine in (exact, fast, *shifted):
        engine.set_classes(classes, background="voc")
    reference, got = exact.predict(images), fast.predict(images)
    assert all(np.isfinite(p.scores).all() for p in got)
    rel = exact.config.tagclip.tag_rel_threshold
    assert prediction_mismatches(reference, got, [e.predict(images) for e in shifted], rel) == []


def test_embeddings_come_with_unchanged_predictions(tiny_engine):
    """predict(..., embeddings=True): CLIP's global embedding (open_clip's encode_image of the same 224x224
    input) rides along; scores, tags, candidates and patch maps are bit-identical to a plain predict."""
    import torch

    from tagclip_core.preprocess import to_pixels

    images = [_image(224, 224, 41), _image(96, 128, 42)]
    plain = tiny_engine.predict(images)
    with_embeddings = tiny_engine.predict(images, embeddings=True)
    for a, b in zip(plain, with_embeddings, strict=True):
        assert a.embedding is None
        assert b.embedding.shape == (64,) and b.embedding.dtype == np.float32
        assert np.linalg.norm(b.embedding) == pytest.approx(1.0, abs=1e-5)
        assert np.array_equal(a.scores, b.scores) and a.tags == b.tags and a.candidates == b.candidates
        assert np.array_equal(a.patch_scores, b.patch_scores)
    with torch.inference_mode():
        pixels = to_pixels(images[0], (224, 224), tiny_engine.config.preprocess)[None]
        expected = tiny_engine.clip.model.encode_image(pixels, normalize=True)[0].numpy()
    np.testing.assert_allclose(with_embeddings[0].embedding, expected, atol=1e-6)
    each = tiny_engine.predict_each(images, embeddings=True)
    assert all(np.array_equal(e.embedding, w.embedding) for e, w in zip(each, with_embeddings, strict=True))
