"""Engine benchmark (not a test): per-stage times, images/s, GFLOP/s against the matmul peak, the main forward
against its matmul-only floor, peak memory.

Random weights with the real ViT-B/16 shape (compute cost does not depend on weight values). Each scenario
runs in its own process so its peak RSS is its own.

    .venv/bin/python bench/bench_engine.py                 # CPU: text; 500x375 (bf16 too if native); 640x480; 12 MP
    .venv/bin/python bench/bench_engine.py --gpu           # CUDA: images/s for batches, fp32 / bf16 / fp16
    .venv/bin/python bench/bench_engine.py --json out.json # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tagclip_core import EngineConfig, ModelSpec, TagCLIP  # noqa: E402
from tagclip_core.model import native_cpu_bf16  # noqa: E402
from tagclip_core.prompts import BACKGROUND_VOC, VOC_CLASSES  # noqa: E402
from tagclip_core.random_weights import VIT_B_16, write_random_checkpoint  # noqa: E402
from tagclip_core.timing import StageTimer  # noqa: E402


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 8) -> float:
    """Best observed GFLOP/s of square matmuls (after a warm-up): the machine's practical peak for this dtype."""
    best = 0.0
    for size in (1024, 2048, 3072):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def forward_gflop(height: int, width: int, width_c: int = 768, blocks: int = 12, patch: int = 16) -> float:
    """FLOPs of TagCLIP's main forward: patch embedding, 12 blocks (qkv, scores, masked+unmasked softmax
    inputs, PV, out, MLP) and the projection, in GFLOP."""
    tokens = (height // patch) * (width // patch) + 1
    embed = 2 * (tokens - 1) * 3 * patch * patch * width_c
    per_block = 24 * tokens * width_c**2 + 4 * tokens**2 * width_c
    return (embed + blocks * per_block) / 1e9


@torch.inference_mode()
def forward_matmul_floor_s(visual: torch.nn.Module, tokens: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds the main forward's matrix products alone take (best of 3): per block the qkv, attention score,
    attention-value, output and MLP products with the model's own weights, on stand-in activations of the
    image's shape. Nothing else: the forward cannot get below this without changing its arithmetic."""
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    width = blocks[0].attn.embed_dim
    x = torch.randn(1, tokens, width, device=device, dtype=dtype)
    q = torch.randn(tokens, width // heads, device=device, dtype=dtype)
    scores = torch.rand(tokens, tokens, device=device, dtype=dtype)

    weights = [
        [w.to(dtype) for w in (b.attn.in_proj_weight, b.attn.out_proj.weight, b.mlp.c_fc.weight, b.mlp.c_proj.weight)]
        for b in blocks
    ]

    def products() -> None:
        for qkv, out, fc, proj in weights:
            torch.nn.functional.linear(x, qkv)
            for _ in range(heads):  # one head at a time, as the engine runs them
                torch.mm(q, q.t())
                torch.mm(scores, q)
            torch.nn.functional.linear(x, out)
            torch.nn.functional.linear(torch.nn.functional.linear(x, fc), proj)

    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        products()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def photo(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def run_scenario(args: argparse.Namespace) -> dict:
    """One scenario in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    cache = Path(args.cache)
    result: dict = {"scenario": args.scenario, "threads": torch.get_num_threads()}
    if args.scenario == "text":
        engine = TagCLIP.load(ModelSpec(checkpoint=args.checkpoint, cache_dir=str(cache), device=device))
        started = time.perf_counter()
        engine.set_classes(VOC_CLASSES, background="voc")
        result["text_cold_s"] = time.perf_counter() - started
        result["prompts"] = (len(VOC_CLASSES) + len(BACKGROUND_VOC)) * 85
        fresh = TagCLIP.load(ModelSpec(checkpoint=args.checkpoint, cache_dir=str(cache), device=device))
        started = time.perf_counter()
        fresh.set_classes(VOC_CLASSES, background="voc")
        result["text_from_disk_cache_s"] = time.perf_counter() - started
        started = time.perf_counter()
        fresh.set_classes(VOC_CLASSES, background="voc")
        result["text_from_memory_s"] = time.perf_counter() - started
    else:
        precision = args.precision
        engine = TagCLIP.load(
            ModelSpec(checkpoint=args.checkpoint, cache_dir=str(cache), device=device, precision=precision),
            EngineConfig(gpu_batch_size=args.batch),
        )
        engine.set_classes(VOC_CLASSES, background="voc")
        height, width = args.size
        images = [photo(height, width, seed) for seed in range(args.images)]
        engine.predict(images[:1])  # warm-up: allocator, kernels, pos-embed cache
        timer = StageTimer()
        started = time.perf_counter()
        predictions = engine.predict(images, timer=timer)
        elapsed = time.perf_counter() - started
        input_h, input_w = predictions[0].input_size
        visual = engine.clip.visual
        gflop = forward_gflop(
            input_h, input_w, visual.conv1.out_channels, engine.clip.num_blocks, engine.clip.patch_size
        )
        result.update(
            size=[height, width],
            input_size=[input_h, input_w],
            images=len(images),
            precision=precision,
            per_image_s=elapsed / len(images),
            images_per_s=len(images) / elapsed,
            stages_per_image_s={k: v / len(images) for k, v in timer.seconds.items()},
            cwr_crops_per_image=sum(len(p.candidates) for p in predictions) / len(images),
            forward_gflop=gflop,
            forward_gflops=gflop * len(images) / timer.seconds["forward"],
        )
        # Before the floor and peak measurements below, which allocate their own operands.
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if device == "cuda":
            result["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        tokens = (input_h // engine.clip.patch_size) * (input_w // engine.clip.patch_size) + 1
        floor = forward_matmul_floor_s(visual, tokens, torch.device(device), engine.clip.dtype)
        result["forward_matmul_floor_s"] = floor
        result["forward_over_matmul_floor"] = timer.seconds["forward"] / len(images) / floor
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[getattr(args, "precision", "fp32")]
    result["matmul_peak_gflops"] = matmul_peak_gflops(torch.device(device), dtype)
    if "forward_gflops" in result:
        result["forward_fraction_of_peak"] = result["forward_gflops"] / result["matmul_peak_gflops"]
    result.setdefault("peak_rss_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(json.dumps(result), flush=True)
    return result


def spawn(args: argparse.Namespace, scenario: str, **extra) -> dict:
    command = [sys.executable, __file__, "--scenario", scenario, "--checkpoint", args.checkpoint, "--cache", args.cache,
               "--threads", str(args.threads)]  # fmt: skip
    for key, value in extra.items():
        flag = f"--{key.replace('_', '-')}"
        command += [flag, *map(str, value)] if isinstance(value, list | tuple) else [flag, str(value)]
    if args.gpu:
        command.append("--gpu")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # one failed scenario must not lose the others' figures
        return {"scenario": scenario, **extra, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["text", "image"])
    parser.add_argument("--checkpoint")
    parser.add_argument("--cache")
    parser.add_argument("--size", type=int, nargs=2, default=[375, 500])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--json", help="write all figures to this file")
    args = parser.parse_args()
    if args.scenario:
        run_scenario(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        args.checkpoint = args.checkpoint or str(write_random_checkpoint(Path(scratch) / "vit-b-16.pt", VIT_B_16))
        args.cache = str(Path(scratch) / "cache")
        results = [spawn(args, "text")]
        if args.gpu:
            for precision in ("fp32", "bf16", "fp16"):
                results.append(spawn(args, "image", size=[375, 500], images=64, batch=32, precision=precision))
        else:
            results.append(spawn(args, "image", size=[375, 500], images=args.images))
            if native_cpu_bf16():  # elsewhere bf16 is emulated, many times slower than fp32: not worth a run
                results.append(spawn(args, "image", size=[375, 500], images=args.images, precision="bf16"))
            results.append(spawn(args, "image", size=[480, 640], images=args.images))  # COCO's usual size
            results.append(spawn(args, "image", size=[3000, 4000], images=1))
    for result in results:
        print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
