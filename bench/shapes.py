"""A generated multi-label image set whose classes are visually distinct: each image composites 1-3 class
elements (a shape of a fixed colour, or a texture patch) at random places and sizes on a noisy background.
Deterministic from a seed (numpy's PCG64), so a benchmark run is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# (label, what it looks like); every label's look is unique in shape, colour or texture.
CLASSES: tuple[tuple[str, str], ...] = (
    ("circle", "a red disc"),
    ("square", "a blue square"),
    ("triangle", "a green triangle"),
    ("stripes", "a patch of black and white stripes"),
    ("checkerboard", "a patch of orange and purple checks"),
    ("ring", "a yellow ring"),
)
LABELS = tuple(label for label, _ in CLASSES)


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    labels: tuple[str, ...]


def _draw(canvas: Image.Image, label: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if label == "circle":
        draw.ellipse(box, fill=(220, 30, 30))
    elif label == "square":
        draw.rectangle(box, fill=(30, 60, 220))
    elif label == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=(30, 170, 50))
    elif label == "ring":
        width = max(3, (x1 - x0) // 6)
        draw.ellipse(box, outline=(235, 210, 20), width=width)
    elif label == "stripes":
        step = int(rng.integers(4, 9))
        for x in range(x0, x1, 2 * step):
            draw.rectangle((x, y0, min(x + step - 1, x1), y1), fill=(10, 10, 10))
            draw.rectangle((min(x + step, x1), y0, min(x + 2 * step - 1, x1), y1), fill=(245, 245, 245))
    elif label == "checkerboard":
        step = int(rng.integers(5, 10))
        for y in range(y0, y1, step):
            for x in range(x0, x1, step):
                odd = ((x - x0) // step + (y - y0) // step) % 2
                draw.rectangle(
                    (x, y, min(x + step - 1, x1), min(y + step - 1, y1)), fill=(240, 140, 20) if odd else (120, 40, 160)
                )
    else:
        raise ValueError(f"unknown class {label!r}")


def sample(seed: int, size: int = 224, max_labels: int = 3) -> Sample:
    """One image with 1..max_labels distinct classes, each drawn once, on a noisy grey-green background."""
    rng = np.random.Generator(np.random.PCG64(seed))
    base = rng.uniform(90, 170, size=3)
    background = np.clip(base + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(background)
    count = int(rng.integers(1, max_labels + 1))
    chosen = tuple(sorted(rng.choice(len(LABELS), size=count, replace=False).tolist()))
    for index in chosen:
        side = int(rng.integers(size // 4, size // 2))
        x0, y0 = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
        _draw(canvas, LABELS[index], (x0, y0, x0 + side, y0 + side), rng)
    return Sample(canvas, tuple(LABELS[i] for i in chosen))


def dataset(count: int, seed: int = 0, size: int = 224) -> list[Sample]:
    return [sample(seed * 1_000_003 + i, size) for i in range(count)]
