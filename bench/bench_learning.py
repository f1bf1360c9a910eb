"""Learning-curve benchmark of the memory of reviewed examples (not a test; docs/learning.md).

On a generated multi-label set with visually distinct classes (bench/shapes.py: shapes, colours and textures
composited), with the random-weight ViT-B/16 (the real shape, seeded random weights): mAP and F1 on held-out
images of TagCLIP alone and with a memory of the first 0, 10, 50, 200 reviewed examples (the reviewer's labels
are the generated ground truth). Then the costs: the memory's vote for one task against 10,000 examples, the
calibration of a 10,000-example memory, and the extra time per prediction (the embedding from the same forward,
hashing the image bytes, the vote).

The engine runs once per image (TagCLIP's scores and the CLIP embedding, in one forward); the curve itself is the
memory's numerics (backend.memory.scoring), exactly as the worker runs them. Random weights carry no meaning:
this measures what the memory does with whatever the random features separate, never what it does with real
CLIP features.

    .venv/bin/python bench/bench_learning.py                  # 260 images through the engine: ~5 min on 2 quiet cores
    .venv/bin/python bench/bench_learning.py --json out.json  # also write the figures as JSON

The engine's outputs are kept in --cache-dir (with the random checkpoint and the text classifier), so a rerun
measures the curve and the costs again without encoding the images again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import LABELS, Sample, dataset  # noqa: E402

from backend.memory.examples import ControlReview, Example, memory_arrays  # noqa: E402
from backend.memory.scoring import Memory, ScoringConfig, adapt, calibrate, tagclip_tags  # noqa: E402
from backend.memory.sqlite_store import SqliteMemoryStore  # noqa: E402
from tagclip_core import ModelSpec, TagCLIP  # noqa: E402
from tagclip_core.metrics import f1_at_relative_threshold, mean_average_precision  # noqa: E402
from tagclip_core.preprocess import model_input_size, to_pixels  # noqa: E402
from tagclip_core.random_weights import VIT_B_16, write_random_checkpoint  # noqa: E402
from tagclip_core.vit import block_forward, embed_patches, interpolate_pos_embed, project_tokens  # noqa: E402


def encode(engine: TagCLIP, images: list) -> tuple[np.ndarray, np.ndarray]:
    """TagCLIP's scores [N, C] and CLIP embeddings [N, D], one forward per image."""
    scores, embeddings = [], []
    for image in images:
        prediction = engine.predict([image], embeddings=True)[0]
        scores.append(prediction.scores)
        embeddings.append(prediction.embedding)
    return np.stack(scores), np.stack(embeddings)


def encoded(engine: TagCLIP, samples: list[Sample], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`encode`, kept in `path` (an .npz) for reruns."""
    if path.exists():
        data = np.load(path)
        return data["scores"], data["embeddings"]
    scores, embeddings = encode(engine, [s.image for s in samples])
    np.savez(path, scores=scores, embeddings=embeddings)
    return scores, embeddings


def truth_of(samples: list[Sample]) -> np.ndarray:
    return np.array([[label in s.labels for label in LABELS] for s in samples])


def micro_f1(truth: np.ndarray, tags: np.ndarray) -> float:
    tp, fp, fn = (truth & tags).sum(), (~truth & tags).sum(), (truth & ~tags).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def learning_curve(
    pool: tuple[np.ndarray, np.ndarray, np.ndarray],
    held: tuple[np.ndarray, np.ndarray, np.ndarray],
    steps: list[int],
    scoring: ScoringConfig,
) -> list[dict]:
    pool_scores, pool_embeddings, pool_truth = pool
    held_scores, held_embeddings, held_truth = held
    alone_tags = tagclip_tags(held_scores)
    alone = {
        "map": mean_average_precision(held_scores, held_truth),
        "f1": f1_at_relative_threshold(held_scores, held_truth, 0.5, argmax_fallback=True).f1,
    }
    rows = []
    for k in steps:
        memory = Memory(
            pool_embeddings[:k], pool_truth[:k], pool_scores[:k].astype(np.float32), np.arange(k, dtype=np.int64)
        )
        calibration = calibrate(memory, LABELS, scoring)
        scores, tags = adapt(calibration, memory, held_embeddings, held_scores, alone_tags)
        rows.append(
            {
                "reviewed": k,
                "tagclip_map": round(alone["map"], 4),
                "tagclip_f1": round(alone["f1"], 4),
                "memory_map": round(mean_average_precision(scores, held_truth), 4),
                "memory_f1": round(micro_f1(held_truth, tags), 4),
                "alpha": calibration.alpha,
                "beta": calibration.beta,
                "thresholds": sum(t is not None for t in calibration.thresholds),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def vote_cost(dims: int, labels: int, examples: int = 10_000, repeats: int = 200) -> dict:
    """Seconds of the memory's vote for one task, and of calibrating, against `examples` random examples."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(examples, dims)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    truth = rng.random((examples, labels)) < 0.3
    memory = Memory(embeddings, truth, rng.random((examples, labels)).astype(np.float32), np.arange(examples))
    started = time.perf_counter()
    calibration = calibrate(memory, LABELS[:labels])
    calibrate_s = time.perf_counter() - started
    query = embeddings[:1] + rng.normal(0, 0.01, size=(1, dims)).astype(np.float32)
    scores = rng.random((1, labels))
    tags = tagclip_tags(scores)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        adapt(calibration, memory, query, scores, tags, [None])
        times.append(time.perf_counter() - started)
    batch = np.repeat(query, 8, axis=0)
    batch_times = []
    for _ in range(repeats // 4):
        started = time.perf_counter()
        adapt(calibration, memory, batch, np.repeat(scores, 8, 0), np.repeat(tags, 8, 0), [None] * 8)
        batch_times.append(time.perf_counter() - started)
    load = memory_load_cost(embeddings, truth)
    return {
        **load,
        "examples": examples,
        "vote_one_task_ms": round(1000 * statistics.median(times), 3),
        "vote_chunk_of_8_ms": round(1000 * statistics.median(batch_times), 3),
        "calibrate_s": round(calibrate_s, 2),
        "stored_vector_bytes": dims * 2,
    }


@torch.inference_mode()
def embedding_step_ms(engine: TagCLIP, image, repeats: int = 50) -> float:
    """Median milliseconds of exactly what `embeddings=True` adds to TagCLIP's forward: CLIP's last block for the
    class token alone (keys and values of every token), ln_post and the projection."""
    clip = engine.clip
    size = model_input_size(image.height, image.width, clip.patch_size, engine.config.preprocess.max_side)
    pixels = to_pixels(image, size, engine.config.preprocess)[None]
    grid = (size[0] // clip.patch_size, size[1] // clip.patch_size)
    pos = interpolate_pos_embed(clip.visual.positional_embedding, grid, clip.pretrained_grid, True)
    x = embed_patches(clip.visual, pixels, pos)
    blocks = clip.visual.transformer.resblocks
    for block in list(blocks)[:-1]:
        x, _ = block_forward(block, x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        cls, _ = block_forward(blocks[-1], x, query_tokens=1)
        project_tokens(clip.visual, cls[:, 0])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def memory_load_cost(embeddings: np.ndarray, truth: np.ndarray) -> dict:
    """Seconds to write the examples one by one into an embedded-mode store, and to read them back into the arrays
    the vote uses (what a process does once after each change to a project's memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteMemoryStore(Path(tmp) / "memory.sqlite3")
        started = time.perf_counter()
        for task, (vector, labels) in enumerate(zip(embeddings, truth, strict=True), start=1):
            positive = tuple(label for label, keep in zip(LABELS, labels, strict=False) if keep)
            review = ControlReview("fp", LABELS[: len(labels)], positive, tuple([0.5] * len(labels)))
            store.put(1, Example(task, task, "t", f"{task:064x}", vector.astype(np.float16), {"tags": review}), 10**6)
        put_s = time.perf_counter() - started
        started = time.perf_counter()
        examples = store.examples(1)
        memory_arrays(examples, "tags", "fp", LABELS[: truth.shape[1]])
        load_s = time.perf_counter() - started
        size = (Path(tmp) / "memory.sqlite3").stat().st_size + (Path(tmp) / "memory.sqlite3-wal").stat().st_size
        store.close()
    return {
        "sqlite_put_ms_each": round(1000 * put_s / len(embeddings), 3),
        "load_s": round(load_s, 3),
        "sqlite_bytes": size,
    }


def prediction_overhead(engine: TagCLIP, images: list, rounds: int = 3) -> dict:
    """Per image: predict() without and with the embedding (interleaved medians: noisy, the difference is within
    run-to-run noise), the embedding step alone, and hashing the image bytes."""
    plain, embedded, hashing = [], [], []
    for _ in range(rounds):
        for image in images:
            started = time.perf_counter()
            engine.predict([image])
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            engine.predict([image], embeddings=True)
            embedded.append(time.perf_counter() - started)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
            started = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            hashing.append(time.perf_counter() - started)
    step = embedding_step_ms(engine, images[0])
    return {
        "predict_s": round(statistics.median(plain), 4),
        "predict_with_embedding_s": round(statistics.median(embedded), 4),
        "embedding_step_ms": round(step, 2),
        "embedding_step_share": round(step / (1000 * statistics.median(plain)), 4),
        "sha256_ms": round(1000 * statistics.median(hashing), 3),
        "png_bytes": len(data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="0,10,50,200", help="reviewed examples at each point of the curve")
    parser.add_argument("--held-out", type=int, default=60, help="held-out images scored at every point")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("--cache-dir", default=".cache/bench-learning", help="checkpoint, text classifier, outputs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = cache / "vit-b-16-random-seed0.pt"
    if not checkpoint.exists():
        write_random_checkpoint(checkpoint, VIT_B_16, seed=0)
    engine = TagCLIP.load(ModelSpec(checkpoint=str(checkpoint), cache_dir=str(cache), device="cpu"))
    started = time.perf_counter()
    engine.set_classes(list(LABELS), background="voc")
    text_s = time.perf_counter() - started
    pool_samples = dataset(max(steps), seed=1, size=args.size)
    held_samples = dataset(args.held_out, seed=2, size=args.size)
    started = time.perf_counter()
    pool_scores, pool_embeddings = encoded(engine, pool_samples, cache / f"pool-{len(pool_samples)}-{args.size}.npz")
    held_scores, held_embeddings = encoded(engine, held_samples, cache / f"held-{len(held_samples)}-{args.size}.npz")
    encode_s = time.perf_counter() - started
    overhead = prediction_overhead(engine, [s.image for s in held_samples[:8]])
    curve = learning_curve(
        (pool_scores, pool_embeddings, truth_of(pool_samples)),
        (held_scores, held_embeddings, truth_of(held_samples)),
        steps,
        ScoringConfig(),
    )
    cost = vote_cost(pool_embeddings.shape[1], len(LABELS))
    figures = {
        "setup": {
            "model": "ViT-B/16 shape, random weights (seed 0)",
            "classes": list(LABELS),
            "image_size": args.size,
            "held_out": args.held_out,
            "torch_threads": args.threads,
            "text_classifier_s": round(text_s, 1),
            "images": len(pool_samples) + len(held_samples),
            "encode_s": round(encode_s, 1),
        },
        "curve": curve,
        "vote_cost": cost,
        "prediction_overhead": {**overhead, "vote_one_task_ms_10k": cost["vote_one_task_ms"]},
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
