"""The `tagclip` command line: parsing, label files, folder walking, JSON lines, eval, and one real run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tagclip_cli.tag
from tagclip_cli.discover import find_images
from tagclip_cli.errors import UsageError
from tagclip_cli.labels import LabelEntry, parse_label_lines, parse_label_list, read_label_file
from tagclip_cli.main import COMMANDS, command_parser, main
from tagclip_cli.tagging import tag_files

pytestmark = pytest.mark.unit

RECORD_KEYS = ["image", "scores", "tags", "error"]


def _tag_args(*argv: str) -> argparse.Namespace:
    command = next(c for c in COMMANDS if c.name == "tag")
    return command_parser(command, tagclip_cli.tag).parse_intermixed_args(list(argv))


def _png(path: Path, width: int = 8, height: int = 6, colour: tuple[int, int, int] = (120, 30, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)
    return path


def _read_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- parsing ---------------------------------------------------------------------------------------------


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "tag" in out and "eval" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["tag", "a.jpg"], "one of the arguments --labels --labels-file is required"),
        (["tag", "a.jpg", "--labels", "a", "--labels-file", "f.txt"], "not allowed with"),
        (["tag", "--labels", "a"], "PATH"),
        (["tag", "a.jpg", "--labels", "a", "--batch-size", "0"], "positive integer"),
        (["tag", "a.jpg", "--labels", "a", "--max-side", "big"], "positive integer"),
        (["tag", "a.jpg", "--labels", "a", "--precision", "fp8"], "invalid choice"),
        (["eval", "--pred", "p.jsonl"], "--gt"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_tag_arguments_in_any_order() -> None:
    args = _tag_args("--out", "r.jsonl", "a.jpg", "--labels", "cat,dog", "dir", "--max-side", "none")
    assert args.paths == ["a.jpg", "dir"]
    assert args.labels == "cat,dog"
    assert args.out == "r.jsonl"
    assert args.max_side == 0  # no cap
    assert args.background == "voc"
    assert args.batch_size == 8


def test_model_options_only_override_what_is_given() -> None:
    assert tagclip_cli.tag.model_spec_fields(_tag_args("a.jpg", "--labels", "a")) == {}
    args = _tag_args(
        "a.jpg", "--labels", "a", "--checkpoint", "w.pt", "--model", "ViT-B-32", "--pretrained", "laion2b",
        "--device", "cuda:1", "--precision", "fp16", "--cache-dir", "/c", "--offline",
    )  # fmt: skip
    assert tagclip_cli.tag.model_spec_fields(args) == {
        "model_name": "ViT-B-32",
        "pretrained": "laion2b",
        "checkpoint": "w.pt",
        "cache_dir": "/c",
        "device": "cuda:1",
        "precision": "fp16",
        "allow_download": False,
    }


def test_main_dispatches_to_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(tagclip_cli.tag, "run", lambda args: seen.append(args) or 7)
    assert main(["tag", "x.png", "--labels", "a"]) == 7
    assert seen[0].paths == ["x.png"]


def test_usage_errors_exit_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tag", str(tmp_path / "missing"), "--labels", "a"]) == 2
    assert f"no such file or folder: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["tag", str(tmp_path), "--labels", "a,a"]) == 2
    assert "duplicate labels ['a']" in capsys.readouterr().err
    assert main(["tag", str(tmp_path), "--labels", "a", "--checkpoint", str(tmp_path / "w.pt")]) == 2
    assert "--checkpoint: no such file" in capsys.readouterr().err
    assert main(["tag", str(tmp_path), "--labels", "a", "--out", str(tmp_path / "no" / "r.jsonl")]) == 2
    assert "folder does not exist" in capsys.readouterr().err


def test_help_and_usage_errors_do_not_import_torch(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from tagclip_cli.main import main\n"
        "for argv in (['--help'], ['tag', '--help'], ['eval', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"assert main(['tag', {str(tmp_path / 'missing')!r}, '--labels', 'a']) == 2\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'tagclip_core'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_empty_folder_exits_0_without_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tag", str(tmp_path), "--labels", "a"]) == 0
    assert "0 images, 0 errors" in capsys.readouterr().err


# ---- label lists and files ---------------------------------------------------------------------------------


def test_label_list() -> None:
    assert parse_label_list(" cat, dog ,,person ") == (LabelEntry("cat"), LabelEntry("dog"), LabelEntry("person"))
    with pytest.raises(UsageError, match="names no label"):
        parse_label_list(" , ")
    with pytest.raises(UsageError, match=r"duplicate labels \['cat'\]"):
        parse_label_list("cat,dog,cat")


def test_label_file_syntax() -> None:
    lines = [
        "# classes for the zoo",
        "cat",
        "",
        "person: person, human , ,people",
        "  tv:television",
        "dog:",
    ]
    assert parse_label_lines(lines, "labels.txt") == (
        LabelEntry("cat", ()),
        LabelEntry("person", ("person", "human", "people")),
        LabelEntry("tv", ("television",)),
        LabelEntry("dog", ()),
    )


@pytest.mark.parametrize(
    "lines,message",
    [
        (["cat", ": human"], "labels.txt:2: no label before ':'"),
        (["# only a comment", ""], "labels.txt: no labels"),
        (["cat", "cat: kitty"], r"duplicate labels \['cat'\]"),
    ],
)
def test_label_file_errors(lines: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_label_lines(lines, "labels.txt")


def test_read_label_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("chat: chat, cat\nchien\n", encoding="utf-8")
    assert read_label_file(str(path)) == (LabelEntry("chat", ("chat", "cat")), LabelEntry("chien"))
    with pytest.raises(UsageError, match="cannot read labels file"):
        read_label_file(str(tmp_path / "missing.txt"))


# ---- folder walking -----------------------------------------------------------------------------------------


def test_find_images_walks_folders_recursively(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "sub/deeper/d.tiff", "z/e.gif", "notes.txt", "raw.cr2"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    for hidden in [".hidden.jpg", ".cache/f.jpg"]:
        (root / hidden).parent.mkdir(parents=True, exist_ok=True)
        (root / hidden).write_bytes(b"x")
    explicit = tmp_path / "scan.dat"
    explicit.write_bytes(b"x")

    found = find_images([str(root), str(explicit), str(root / "b.jpg")])
    expected = ["a.PNG", "b.jpg", "sub/c.webp", "sub/deeper/d.tiff", "z/e.gif"]
    # Sorted within each folder, then subfolders; explicit files always; duplicates dropped.
    assert found == [str(root / name) for name in expected] + [str(explicit)]


def test_find_images_refuses_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or folder"):
        find_images([str(tmp_path / "nope")])


# ---- the tagging loop and its JSON lines ------------------------------------------------------------------------


@dataclass(frozen=True)
class FakePrediction:
    scores: dict[str, float]
    tags: tuple[str, ...]

    def score_dict(self) -> dict[str, float]:
        return dict(self.scores)


@dataclass
class FakeEngine:
    """Scores an image by its mean red value; raises on any batch holding a 13-pixel-wide image."""

    calls: list[int] = field(default_factory=list)

    def predict(self, images: list[Image.Image]) -> list[FakePrediction]:
        self.calls.append(len(images))
        if any(image.width == 13 for image in images):
            raise RuntimeError("engine failure")
        return [self._one(image) for image in images]

    @staticmethod
    def _one(image: Image.Image) -> FakePrediction:
        red = float(np.asarray(image.convert("RGB"))[..., 0].mean()) / 255
        return FakePrediction({"cat": red, "dog": 1 - red}, ("cat",) if red > 0.5 else ("dog",))


def test_tag_files_writes_one_line_per_image_and_isolates_failures(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png", colour=(255, 0, 0))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    poison = _png(tmp_path / "poison.png", width=13)
    blue = _png(tmp_path / "blue.png", colour=(0, 0, 255))
    paths = [str(good), str(corrupt), str(poison), str(blue)]
    engine = FakeEngine()
    out = tmp_path / "out.jsonl"
    with out.open("w") as stream:
        summary = tag_files(paths, engine.predict, stream, batch_size=4, progress=False)

    assert summary.line() == "4 images, 2 errors"
    records = _read_lines(out.read_text())
    assert [r["image"] for r in records] == paths
    assert all(list(r) == RECORD_KEYS for r in records)
    assert records[0] == {"image": str(good), "scores": {"cat": 1.0, "dog": 0.0}, "tags": ["cat"], "error": None}
    assert records[3]["tags"] == ["dog"]
    assert records[1]["scores"] is None and records[1]["tags"] is None
    assert str(corrupt) in records[1]["error"]
    assert records[2]["scores"] is None and "engine failure" in records[2]["error"]
    # One batch of the three decodable images, then a retry one by one.
    assert engine.calls == [3, 1, 1, 1]


def test_tag_command_writes_jsonl_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _png(tmp_path / "imgs" / "a.png", colour=(255, 0, 0))
    _png(tmp_path / "imgs" / "b.png", colour=(0, 0, 255))
    seen = {}

    def fake_load_engine(args: argparse.Namespace, entries: tuple[LabelEntry, ...]) -> FakeEngine:
        seen["entries"] = entries
        return FakeEngine()

    monkeypatch.setattr(tagclip_cli.tag, "load_engine", fake_load_engine)
    assert main(["tag", str(tmp_path / "imgs"), "--labels", "cat,dog", "--batch-size", "1"]) == 0
    captured = capsys.readouterr()
    records = _read_lines(captured.out)
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.png"]
    assert [r["tags"] for r in records] == [["cat"], ["dog"]]
    assert "2 images, 0 errors" in captured.err
    assert seen["entries"] == (LabelEntry("cat"), LabelEntry("dog"))


# ---- eval ------------------------------------------------------------------------------------------------------

# The 3 x 3 case worked by hand in tests/unit/test_core_metrics.py: AP (5/6, 1, none), mAP 11/12 skipping the
# label without positives, 11/18 as the reference averages; overall P 3/5, R 3/4, F1 2/3 at relative 0.5.
SCORES = {
    "imgs/a.png": {"cat": 0.9, "dog": 0.2, "bird": 0.1},
    "imgs/b.png": {"cat": 0.6, "dog": 0.8, "bird": 0.1},
    "imgs/c.png": {"cat": 0.3, "dog": 0.6, "bird": 0.7},
}
TRUTH = {"imgs/a.png": ["cat"], "imgs/b.png": ["dog"], "imgs/c.png": ["cat", "dog"]}


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _eval_files(tmp_path: Path) -> tuple[Path, Path]:
    predictions = [{"image": f"./{k}", "scores": v, "tags": [], "error": None} for k, v in SCORES.items()]
    predictions.append({"image": "imgs/broken.png", "scores": None, "tags": None, "error": "corrupt"})
    predictions.append({"image": "imgs/extra.png", "scores": SCORES["imgs/a.png"], "tags": [], "error": None})
    truth = [{"image": k, "labels": v} for k, v in TRUTH.items()]
    truth += [{"image": "imgs/broken.png", "labels": ["cat"]}, {"image": "imgs/never.png", "labels": ["zebra"]}]
    return _write_jsonl(tmp_path / "pred.jsonl", predictions), _write_jsonl(tmp_path / "gt.jsonl", truth)


def test_eval_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _eval_files(tmp_path)
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["images"] == {
        "evaluated": 3,
        "missing_prediction": 1,
        "failed_prediction": 1,
        "unmatched_prediction": 1,
    }
    assert report["map"] == pytest.approx(11 / 12)
    assert report["map_reference"] == pytest.approx(11 / 18)
    assert (report["precision"], report["recall"], report["f1"]) == pytest.approx((0.6, 0.75, 2 / 3))
    assert report["per_label"] == [
        {"label": "cat", "ap": pytest.approx(5 / 6), "positives": 2},
        {"label": "dog", "ap": pytest.approx(1.0), "positives": 2},
        {"label": "bird", "ap": None, "positives": 0},
    ]
    assert report["unknown_gt_labels"] == ["zebra"]
    assert "zebra" in captured.err


def test_eval_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _eval_files(tmp_path)
    assert main(["eval", "--pred", str(pred), "--gt", str(gt)]) == 0
    out = capsys.readouterr().out
    assert "mAP: 0.916667 over 2 labels with positives (reference mean over all 3 labels: 0.611111)" in out
    assert "F1: 0.666667, Precision: 0.600000, Recall: 0.750000" in out
    assert any(line.split() == ["cat", "0.8333", "2"] for line in out.splitlines())
    assert any(line.split() == ["bird", "-", "0"] for line in out.splitlines())


@pytest.mark.parametrize(
    "pred_lines,gt_lines,message",
    [
        (
            ['{"image": "a.png", "scores": {"x": 1.0}}', "{not json"],
            ['{"image": "a.png", "labels": []}'],
            ":2: not valid",
        ),
        (
            ['{"image": "a.png", "scores": {"x": 1.0}}', '{"image": "./a.png", "scores": {"x": 0.5}}'],
            ['{"image": "a.png", "labels": []}'],
            "appears twice",
        ),
        (
            ['{"image": "a.png", "scores": {"x": 1.0}}', '{"image": "b.png", "scores": {"y": 0.5}}'],
            ['{"image": "a.png", "labels": []}'],
            "differ from the first line",
        ),
        (['{"image": "a.png", "scores": {"x": 1.0}}'], ['{"image": "b.png", "labels": ["x"]}'], "no image has both"),
        (['{"image": "a.png", "scores": {"x": 1.0}}'], ['{"image": "a.png", "labels": "x"}'], "list of strings"),
        (['{"image": "a.png", "error": "bad", "scores": null}'], ['{"image": "a.png", "labels": []}'], "no line with"),
    ],
)
def test_eval_input_errors(
    tmp_path: Path, pred_lines: list[str], gt_lines: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(pred_lines) + "\n")
    gt = tmp_path / "gt.jsonl"
    gt.write_text("\n".join(gt_lines) + "\n")
    assert main(["eval", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert message in capsys.readouterr().err


# ---- end to end with the real engine and a tiny random-weight checkpoint --------------------------------------


@pytest.mark.slow
def test_tag_end_to_end_with_random_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tagclip_core.random_weights import write_random_checkpoint

    checkpoint = write_random_checkpoint(tmp_path / "tiny.pt")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (48, 32), dtype=np.uint8), mode="L").save(folder / "sub" / "b.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "results.jsonl"
    common = ["--labels", "cat,dog", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--background", "none"]

    status = main(["tag", str(folder), "--checkpoint", str(checkpoint), *common, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "3 images, 1 errors" in err
    records = {Path(r["image"]).name: r for r in _read_lines(out.read_text())}
    assert sorted(records) == ["a.png", "b.jpg", "broken.png"]
    for name in ("a.png", "b.jpg"):
        record = records[name]
        assert list(record) == RECORD_KEYS and record["error"] is None
        assert set(record["scores"]) == {"cat", "dog"}
        assert all(0.0 <= s <= 1.0 for s in record["scores"].values())
        assert record["tags"] and set(record["tags"]) <= {"cat", "dog"}
    assert records["broken.png"]["scores"] is None
    assert str(folder / "broken.png") in records["broken.png"]["error"]

    bad_weights = tmp_path / "bad.pt"
    bad_weights.write_bytes(b"not a checkpoint")
    assert main(["tag", str(folder), "--checkpoint", str(bad_weights), *common, "--out", str(out)]) == 1
    assert "cannot load the model" in capsys.readouterr().err
