"""backend.resolve with extra_params.learn: the memory's generation enters the model_version only for a learning
project (with something to learn), and a project that does not learn keeps exactly the version it had."""

from __future__ import annotations

import pytest

from backend.errors import BadRequestError, MemoryUnavailableError
from backend.resolve import Resolver, project_number
from backend.settings import Settings

pytestmark = pytest.mark.unit

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat" predicted_values="cat,kitten"/><Choice value="Dog"/></Choices>'
    '<BrushLabels name="mask" toName="image"><Label value="Cat"/></BrushLabels></View>'
)
# What these inputs gave before the memory existed (default settings: pretrained OpenAI ViT-B/16, fp32, voc).
VERSIONS_WITHOUT_MEMORY = {
    "default": "tagclip-ViT-B-16-aebb156b47c1",
    "background none": "tagclip-ViT-B-16-523f6c3a617a",
    "without config": "tagclip-ViT-B-16-37a95a76d5b8",
}


def resolver(generations: dict[int, int] | None = None) -> Resolver:
    table = generations or {}
    return Resolver(Settings(), generations=lambda project: table.get(project, 0))


def test_a_project_that_does_not_learn_keeps_its_version_to_the_byte():
    r = resolver({3: 7})
    for extra, project in ((None, None), ({}, "3.17"), ({"learn": False}, 3), ({"learn": True}, None)):
        resolution = r.resolve(CONFIG, extra, project)
        assert resolution.model_version == VERSIONS_WITHOUT_MEMORY["default"] and resolution.learning is None
    assert r.resolve(CONFIG, {"background": "none"}, 3).model_version == VERSIONS_WITHOUT_MEMORY["background none"]
    assert r.version_without_config({"learn": True}) == VERSIONS_WITHOUT_MEMORY["without config"]


def test_a_learning_projects_version_names_its_generation():
    r = resolver({3: 0, 4: 2})
    zero = r.resolve(CONFIG, {"learn": True}, "3.1796201045")
    two = r.resolve(CONFIG, {"learn": True}, 4)
    assert zero.learning.project == 3 and zero.learning.generation == 0 and zero.learning.controls == ("tags",)
    assert two.memory_generation == 2
    assert len({zero.model_version, two.model_version, VERSIONS_WITHOUT_MEMORY["default"]}) == 3
    # A bulk chunk pins the generation its planner saw: the worker's resolution matches the planner's.
    assert r.resolve(CONFIG, {"learn": True}, 3, generation=2).model_version == two.model_version
    # The same generation of another project gives the same version (the version names weights, config, memory).
    assert resolver({9: 2}).resolve(CONFIG, {"learn": True}, 9).model_version == two.model_version


def test_nothing_to_learn_means_no_memory():
    """Region controls only, or whole-image controls with an absolute threshold: the memory has nothing to adapt."""
    regions = (
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="m" toName="image"><Label value="A"/></BrushLabels></View>'
    )
    assert resolver().resolve(regions, {"learn": True}, 3).learning is None
    assert resolver().resolve(CONFIG, {"learn": True, "threshold": 0.3}, 3).learning is None
    thresholded = CONFIG.replace('choice="multiple"', 'choice="multiple" model_score_threshold="0.4"')
    assert resolver().resolve(thresholded, {"learn": True}, 3).learning is None


def test_learn_must_be_a_boolean():
    with pytest.raises(BadRequestError, match="extra_params.learn must be true or false"):
        resolver().options({"learn": "yes"})


def test_an_unreadable_memory_is_a_503_not_a_wrong_version():
    def broken(project: int) -> int:
        raise ConnectionError("store down")

    with pytest.raises(MemoryUnavailableError, match="store down") as caught:
        Resolver(Settings(), generations=broken).resolve(CONFIG, {"learn": True}, 3)
    assert caught.value.status == 503
    assert Resolver(Settings(), generations=broken).resolve(CONFIG, None, 3).learning is None  # never read then


@pytest.mark.parametrize(
    ("given", "expected"), [(12, 12), ("12.1796201045", 12), ("12", 12), ("", None), (None, None), ("x.1", None)]
)
def test_project_number(given, expected):
    assert project_number(given) == expected
