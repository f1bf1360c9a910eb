"""Prompt data: the templates of the text classifier and the background word sets.

Data only. The 85 templates are open_clip's 80 OpenAI ImageNet templates, in their order, followed
by five scene templates, exactly as the TagCLIP reference ensembles them.
"""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def _as_format_string(template) -> str:
    # open_clip stores templates as lambdas; "{}" survives the call and gives the format string.
    return template("{}")


TAGCLIP_TEMPLATES: tuple[str, ...] = tuple(_as_format_string(t) for t in OPENAI_IMAGENET_TEMPLATES) + SCENE_TEMPLATES

# Words that take part in every softmax but are never reported (TagCLIP's BACKGROUND_CATEGORY lists).
# PASCAL VOC's 20 class names as the reference spells them (its VOC2007/2012 setting).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Order as in the reference (it only moves float summation order, but we keep it exact).
BACKGROUND_VOC: tuple[str, ...] = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)
# The COCO set is the VOC set without "keyboard" and "sign".
BACKGROUND_COCO: tuple[str, ...] = tuple(w for w in BACKGROUND_VOC if w not in ("keyboard", "sign"))

NAMED_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "voc": BACKGROUND_VOC,
    "coco": BACKGROUND_COCO,
    "none": (),
}


def resolve_background(spec: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Background words from a set name ('voc', 'coco', 'none'), a comma list, or a sequence."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in NAMED_BACKGROUNDS:
            return NAMED_BACKGROUNDS[key]
        return tuple(word.strip() for word in spec.split(",") if word.strip())
    return tuple(word.strip() for word in spec if word.strip())
