"""`tagclip report --project ID`: the model's predictions against the reviewed annotations (review.py):
a table in the terminal, `--json FILE`, `--html FILE` (with a per-label chart), and `--write-thresholds`
to put each control's suggested `model_score_threshold` into the project's label config.

The predictions compared are those of `--model-version`, else of the version found on most reviewed
tasks. Reads one export snapshot with full predictions; needs no model, no Redis, no torch.

When the project has a memory of reviewed examples (docs/learning.md; Redis with REDIS_URL or --redis-url, else
the SQLite file under TAGCLIP_CACHE_DIR), the report adds TagCLIP alone against TagCLIP with the memory, per
label, by k-fold cross-validation on the reviewed examples (memory_review.py), so a team can tell whether
learning helps their project.
Writing thresholds changes the label config and so the model_version: the next `tagclip preannotate`
predicts every task again with the thresholds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from .errors import UsageError
from .memory_review import MemoryReport, format_memory_report, memory_report
from .review import Report, build_report, floor_threshold
from .studio import add_studio_arguments, project_snapshot

THRESHOLD_ATTR = "model_score_threshold"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_studio_arguments(parser)
    parser.add_argument("--model-version", help="predictions of this version (default: the most common one)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--html", metavar="FILE", help="write the report as an HTML page with a per-label chart")
    parser.add_argument(
        "--write-thresholds",
        action="store_true",
        help=f"set each control's {THRESHOLD_ATTR} in the label config to the suggested value",
    )
    parser.add_argument("--force", action="store_true", help="also write thresholds that do not beat the F1 now")
    parser.add_argument("--redis-url", help="the workers' Redis (REDIS_URL), where a learning project's memory is")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the memory section (default 5)")


def run(args: argparse.Namespace) -> int:
    from backend.errors import BackendError

    from .dataset import read_config
    from .export import write_text
    from .report_html import render

    client, project, tasks = project_snapshot(args, "report", full_predictions=True)
    label_config = project["label_config"]
    report = build_report(tasks, read_config(label_config), args.model_version)
    print(format_report(report))
    memory = memory_section(args, client, label_config)
    if memory is not None:
        print("\n" + format_memory_report(memory))
    if args.json:
        extra = {"memory": dataclasses.asdict(memory) if memory is not None else None}
        write_text(
            json.dumps({"project": args.project, **dataclasses.asdict(report), **extra}, indent=2) + "\n", args.json
        )
    if args.html:
        write_text(render(report, args.project, memory), args.html)
    if args.write_thresholds:
        thresholds = improving_thresholds(report, args.force)
        if not thresholds:
            print("no threshold written: none beats the current rule's F1 (--force writes them anyway)")
            return 0
        try:
            client.update_label_config(args.project, with_thresholds(label_config, thresholds))
        except BackendError as e:
            raise UsageError(str(e)) from e
        written = ", ".join(f"{name}={value:g}" for name, value in thresholds.items())
        print(f"wrote {THRESHOLD_ATTR} into the label config: {written} (this changes the model_version)")
    return 0


def memory_section(args: argparse.Namespace, client: Any, label_config: str) -> MemoryReport | None:
    """The memory section, or None when the project has no memory here (or fewer than 2 examples)."""
    from backend.bulk.planner import project_extra_params
    from backend.errors import BackendError
    from backend.memory.examples import learning_controls
    from backend.memory.scoring import ScoringConfig
    from backend.memory.store import SQLITE_FILE, cache_root, open_store
    from backend.resolve import Resolver
    from backend.settings import Settings

    settings = Settings.from_env()
    if args.redis_url:
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    if not settings.redis_url and not (cache_root(settings) / SQLITE_FILE).exists():
        return None
    try:
        extra = project_extra_params(client.ml_backends(args.project))
        controls = learning_controls(Resolver(settings).resolve(label_config, extra).plan)
        store = open_store(settings)
        try:
            examples = store.examples(args.project)
            generation = store.generation(args.project)
        finally:
            store.close()
    except (BackendError, OSError) as e:
        raise UsageError(f"the project's memory cannot be read: {e}") from e
    if len(examples) < 2 or not controls:
        return None
    return memory_report(
        examples, controls, generation, args.folds, ScoringConfig(min_support=settings.memory_min_support)
    )


def improving_thresholds(report: Report, force: bool = False) -> dict[str, float]:
    """Each control's suggested threshold (rounded down), where it beats the F1 of the suggestions now."""
    out = {}
    for control in report.controls:
        if control.threshold is None or control.threshold_f1 is None:
            continue
        if force or control.micro_f1 is None or control.threshold_f1 > control.micro_f1:
            out[control.name] = floor_threshold(control.threshold)
    return out


def with_thresholds(label_config: str, thresholds: Mapping[str, float]) -> str:
    """The label config with `model_score_threshold` set on the named controls (comments kept)."""
    try:
        root = ET.fromstring(label_config, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    except ET.ParseError as e:
        raise UsageError(f"the project's label config is not XML: {e}") from e
    missing = set(thresholds)
    for element in root.iter():
        name = element.get("name")
        if name in thresholds and element.get("toName") is not None:
            element.set(THRESHOLD_ATTR, f"{thresholds[name]:g}")
            missing.discard(name)
    if missing:
        raise UsageError(f"controls not found in the label config: {sorted(missing)}")
    return ET.tostring(root, encoding="unicode")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_t(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_report(report: Report) -> str:
    rate = "-" if report.acceptance_rate is None else f"{report.acceptance_rate * 100:.1f} %"
    lines = [
        f"model_version {report.model_version}: {report.reviewed} reviewed task(s), {report.compared} with a "
        f"prediction of it ({report.with_label_scores} with per-label scores)",
        f"accepted unchanged: {report.accepted_unchanged} of {report.compared} ({rate})",
    ]
    header = f"{'label':<24}{'supp':>6}{'sugg':>6}{'TP':>5}{'FP':>5}{'FN':>5}{'P':>7}{'R':>7}{'F1':>7}{'AP':>7}"
    header += f"{'best t':>9}{'F1@t':>7}"
    for control in report.controls:
        kind = "single" if control.single else "multiple"
        lines += ["", f"{control.tag} {control.name} ({kind}), {control.accepted} unchanged", header]
        for m in control.labels:
            lines.append(
                f"{m.label[:23]:<24}{m.support:>6}{m.suggested:>6}{m.tp:>5}{m.fp:>5}{m.fn:>5}"
                f"{_fmt(m.precision):>7}{_fmt(m.recall):>7}{_fmt(m.f1):>7}{_fmt(m.ap):>7}"
                f"{_fmt_t(m.threshold):>9}{_fmt(m.threshold_f1):>7}"
            )
        lines.append(
            f"{'micro / mAP':<24}{'':>27}{_fmt(control.micro_precision):>7}{_fmt(control.micro_recall):>7}"
            f"{_fmt(control.micro_f1):>7}{_fmt(control.mean_ap):>7}{_fmt_t(control.threshold):>9}"
            f"{_fmt(control.threshold_f1):>7}"
        )
        best = f"{THRESHOLD_ATTR}={_fmt_t(control.threshold)} (pooled F1 {_fmt(control.threshold_f1)})"
        lines.append(f"suggested {best}")
    return "\n".join(lines)
