"""Masks end to end: a real Label Studio 1.23.2 project (Image + Choices + BrushLabels + RectangleLabels), the
backend in queue mode with a real `tagclip worker`, predictions stored when a task is opened; then a headless
Chromium, logged in, opens the labeling page and the test asserts on what it draws. Screenshots are kept in
test-artifacts/integration/ (label-studio-masks-<mode>.png)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from .browser import Browser, login_cookies
from .stack import LS_PASSWORD, LS_USER, image_files, wait_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/>'
    '<Choices name="tags" toName="image" choice="multiple" showInline="true">'
    '<Choice value="Cat" predicted_values="cat,kitten"/><Choice value="Dog"/><Choice value="Car"/></Choices>'
    '<BrushLabels name="mask" toName="image"><Label value="Cat" predicted_values="cat,kitten" background="#ff0000"/>'
    '<Label value="Dog" background="#0000ff"/><Label value="Car" background="#ff00ff"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" model_min_region_area="100">'
    '<Label value="Cat" predicted_values="cat,kitten" background="#00ff00"/><Label value="Dog" background="#ffaa00"/>'
    '<Label value="Car" background="#00ffff"/></RectangleLabels></View>'
)
HEIGHT, WIDTH = 300, 400
# Seconds the labeling page may take to load and draw (2 shared cores, Label Studio's frontend bundle).
PAGE_TIMEOUT = 90
# Brush pixels drawn at this alpha or more count as visible (Label Studio draws the RLE value as alpha).
VISIBLE_ALPHA = 128

# Per region on the page: its type, label, and what it draws (brush: the share of the stage's pixels its
# layer paints at VISIBLE_ALPHA or more; rectangle: its box in stage pixels). Stage size in stage pixels.
PAGE_REGIONS = """(() => {
  const annotation = Htx.annotationStore.selected;
  const image = annotation.regionStore.regions[0].object;
  const regions = annotation.regionStore.regions.map(r => {
    const out = {type: r.type, label: r.labeling ? r.labeling.selectedLabels.map(l => l.value)[0] : null,
                 hidden: r.hidden};
    if (r.type === 'brushregion') {
      const canvas = r.layerRef.getCanvas()._canvas;
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let visible = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] >= MIN_ALPHA) visible++;
      out.visible_pixels = visible;
    } else if (r.shapeRef) {
      out.shown = r.shapeRef.isVisible();
      out.box = r.shapeRef.getClientRect({skipStroke: true});
    }
    return out;
  });
  return {regions, stage: [image.stageWidth, image.stageHeight],
          predictions: Htx.annotationStore.predictions.map(p => p.regionStore.regions.length)};
})()""".replace("MIN_ALPHA", str(VISIBLE_ALPHA))
PAGE_READY = """(() => {
  const store = window.Htx && Htx.annotationStore;
  const annotation = store && store.selected;
  if (!annotation || !store.predictions.length || annotation.regionStore.regions.length < COUNT) return false;
  return annotation.regionStore.regions.every(r => r.type !== 'brushregion' || r.layerRef);
})()"""


def region_label(region: dict) -> str:
    (label,) = region["value"][region["type"]]
    return label


@pytest.fixture(scope="module")
def worker(stack):
    stack.start_worker()
    wait_workers(stack.url, 1)
    return stack


def make_project(label_studio, stack, title: str, extra_params: dict | None) -> dict:
    project_id = label_studio.create_project(title, CONFIG)
    task_ids = label_studio.upload_images(project_id, image_files(2, f"m{title[-3:]}", size=(HEIGHT, WIDTH)))
    backend = label_studio.connect_backend(project_id, stack.url, extra_params=extra_params)
    assert backend["state"] == "CO", backend
    setup = {"project": f"{project_id}.0", "schema": CONFIG, "extra_params": extra_params}
    version = requests.post(stack.url + "/setup", json=setup, timeout=3).json()["model_version"]
    return {"id": project_id, "tasks": task_ids, "version": version}


@pytest.fixture(scope="module")
def projects(label_studio, worker) -> dict[str, dict]:
    """One project per mask mode: coarse by default, clip-es through the ML backend's extra_params."""
    return {
        "coarse": make_project(label_studio, worker, "TagCLIP masks coarse", None),
        "clip-es": make_project(label_studio, worker, "TagCLIP masks clip-es", {"mask_mode": "clip-es"}),
    }


@pytest.fixture(scope="module")
def stored(label_studio, projects) -> dict[str, dict]:
    """Open the first task of each project (Label Studio calls /predict) and read back what it stored."""
    out = {}
    for mode, project in projects.items():
        task_id = project["tasks"][0]
        label_studio.api("GET", f"/api/tasks/{task_id}?project={project['id']}")
        predictions = label_studio.api("GET", f"/api/predictions?task={task_id}").json()
        assert len(predictions) == 1, predictions
        out[mode] = predictions[0]
    return out


@pytest.mark.parametrize("mode", ["coarse", "clip-es"])
def test_opening_a_task_stores_brush_and_rectangle_regions(projects, stored, mode):
    prediction = stored[mode]
    assert prediction["model_version"] == projects[mode]["version"]
    assert LabelInterface(CONFIG).validate_prediction({"result": prediction["result"]}, return_errors=True) == []
    regions = prediction["result"]
    types = Counter(r["type"] for r in regions)
    assert types["choices"] == 1 and types["brushlabels"] >= 1 and types["rectanglelabels"] >= 1, types
    (choices,) = [r for r in regions if r["type"] == "choices"]
    tags = set(choices["value"]["choices"])
    for region in regions:
        if region["type"] == "choices":
            continue
        assert region_label(region) in tags  # regions only for predicted tags
        assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
        if region["type"] == "brushlabels":
            alpha = decode_rle(region["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3]
            assert set(np.unique(alpha)) == {0, 255}
    assert projects["coarse"]["version"] != projects["clip-es"]["version"]


@pytest.mark.parametrize("mode", ["coarse", "clip-es"])
def test_labeling_page_draws_the_predicted_regions(label_studio, projects, stored, artifacts, chromium, mode):
    project, prediction = projects[mode], stored[mode]
    expected = [r for r in prediction["result"] if r["type"] != "choices"]
    browser = Browser(chromium, artifacts / f"chromium-{mode}.log")
    try:
        browser.set_cookies(label_studio.url, login_cookies(label_studio.url, LS_USER, LS_PASSWORD))
        browser.navigate(f"{label_studio.url}/projects/{project['id']}/data?task={project['tasks'][0]}")
        ready = PAGE_READY.replace("COUNT", str(len(expected)))
        browser.wait_for(ready, PAGE_TIMEOUT, what="the labeling page with its regions")
        page = browser.wait_for(
            f"(() => {{ const p = {PAGE_REGIONS}; "
            "return p.regions.every(r => r.type !== 'brushregion' || r.visible_pixels > 0) ? p : false; })()",
            PAGE_TIMEOUT,
            what="brush masks drawn",
        )
        text = browser.evaluate("document.body.innerText")
        shot = browser.screenshot(artifacts / f"label-studio-masks-{mode}.png")
    finally:
        browser.close()

    # The prediction is on the page (its tab shows the version's tail) and pre-fills the draft.
    assert page["predictions"] == [len(expected)]
    assert project["version"][-6:] in text
    kinds = {"brushlabels": "brushregion", "rectanglelabels": "rectangleregion"}
    assert Counter((r["type"], r["label"]) for r in page["regions"]) == Counter(
        (kinds[r["type"]], region_label(r)) for r in expected
    )
    assert all(not r["hidden"] for r in page["regions"])
    for label in {region_label(r) for r in expected}:
        assert label in text  # the Regions panel lists it

    stage_w, stage_h = page["stage"]
    # Each brush region paints as much of the image as its mask covers (0/255 at the right size is visible).
    brushes = [r for r in page["regions"] if r["type"] == "brushregion"]
    for region in brushes:
        (mask,) = [r for r in expected if r["type"] == "brushlabels" and region_label(r) == region["label"]]
        covered = (decode_rle(mask["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0).mean()
        drawn = region["visible_pixels"] / (stage_w * stage_h)
        assert drawn == pytest.approx(covered, abs=0.03), (region["label"], drawn, covered)
    # Each rectangle is shown where its percent box says.
    boxes = [r for r in page["regions"] if r["type"] == "rectangleregion"]
    for region in expected:
        if region["type"] != "rectanglelabels":
            continue
        value = region["value"]
        want = (value["x"] * stage_w, value["y"] * stage_h, value["width"] * stage_w, value["height"] * stage_h)
        want = tuple(v / 100 for v in want)
        assert any(
            box["shown"]
            and box["label"] == region_label(region)
            and all(
                abs(got - w) <= 2
                for got, w in zip((box["box"][k] for k in ("x", "y", "width", "height")), want, strict=True)
            )
            for box in boxes
        ), (region_label(region), want, [b["box"] for b in boxes])

    with Image.open(shot) as screenshot:
        assert screenshot.size[0] >= 1000 and screenshot.size[1] >= 600
