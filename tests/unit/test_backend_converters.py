"""Converters against golden JSON (tests/fixtures/backend/converters_golden.json, checked by hand), and
every golden region passes label-studio-sdk's validate_prediction for its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.converters import ControlOutput, converter_for
from backend.converters.base import prediction_score
from backend.labelconfig import parse_label_config

pytestmark = pytest.mark.unit

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "backend" / "converters_golden.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_regions_match_golden(case):
    parsed = parse_label_config(case["config"])
    plan = next(c for c in parsed.plan.controls if c.name == case["control"])
    regions = converter_for(plan).to_regions(ControlOutput.from_json(case["output"]), plan)
    assert regions == case["expected"]
    assert parsed.interface.validate_prediction({"result": regions}, return_errors=True) == []


def test_to_regions_is_pure():
    case = GOLDEN[0]
    plan = parse_label_config(case["config"]).plan.controls[0]
    output = ControlOutput.from_json(case["output"])
    converter = converter_for(plan)
    assert converter.to_regions(output, plan) == converter.to_regions(output, plan)


def test_unknown_labels_in_worker_output_are_ignored():
    plan = parse_label_config(GOLDEN[0]["config"]).plan.controls[0]
    output = ControlOutput(("Elephant", "Cat"), (0.99, 0.5), ("Elephant", "Cat"))
    regions = converter_for(plan).to_regions(output, plan)
    assert regions[0]["value"] == {"choices": ["Cat"]}


def test_prediction_score_is_mean_region_score_or_zero():
    assert prediction_score([]) == 0.0
    assert prediction_score([{"score": 0.2}, {"score": 0.6}]) == pytest.approx(0.4)


def test_output_with_mismatched_lengths_is_rejected():
    with pytest.raises(ValueError):
        ControlOutput.from_json({"labels": ["a", "b"], "scores": [0.1]})
