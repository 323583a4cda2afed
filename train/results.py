"""Write docs/RESULTS.md from the registry cards (never typed by hand).

    python -m train.results                                   # $CXR_REGISTRY or ./registry
    python -m train.results --root registry-kermany --root registry --out docs/RESULTS.md

Every classifier entry of every root becomes a section: the command that reproduces it,
device, seconds, epochs, images/s, and its test metrics plain, with TTA and at the
threshold chosen on validation (Youden). Entries trained on synthetic phantoms are marked
as such; broken entries are listed with their reason. ``--levers`` / ``--ensembles`` (the
committed docs/results/levers.jsonl and docs/results/ensembles.jsonl: metric lines that
``python -m bench.recipes --record`` and ``python -m bench.ensembles --record`` append) add the
lever screen (with the seed spread) and the ensemble table; a hand-written block of the
previous output between ``<!-- notes: hand-written, kept by train.results -->`` and
``<!-- /notes -->`` is kept.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxr_core.cards import ClassifierCard, MetricKey
from cxr_core.config import ordered_tasks
from cxr_core.registry import EntryStatus, list_entries, registry_root, usable
from cxr_core.training import RECIPES, TrainConfig

#: Published reference (Kermany et al., Cell 2018) and this project's targets on the official test split.
TARGETS = {"binary": {"accuracy": 0.93, "auroc": 0.97}, "multiclass": {"accuracy": 0.85}}
#: Issue 14's targets (official test split; every choice on validation). Binary sensitivity and specificity
#: are read at the card's operating point in use; 3-class recall per class; ECE of the calibrated probabilities.
ISSUE14 = {
    "binary": {"accuracy": 0.928, "auroc": 0.968, "sensitivity": 0.93, "specificity": 0.90, "ece": 0.05},
    "multiclass": {"accuracy": 0.85, "recall": 0.80, "ece": 0.05},
}
#: Lung-focus target of issue 14 (HiResCAM at stride 16, lung box rows 12-85 %, columns 10-90 %).
LUNG_TARGET = {"peak_inside": 0.80, "mass_inside": 0.80}
_FLAG_NAMES = {"architecture": "arch"}
_AUG_FLAGS = {"rotate_deg": "rotate", "shift": "shift", "zoom": "zoom", "contrast": "contrast", "brightness": "brightness"}
_SKIP = {"data", "task", "augment", "notes", "recipe"}


def command_from_args(args: dict[str, Any]) -> str:
    """The ``python -m train.classifier`` line that reproduces a card's ``training.args`` (non-defaults only)."""
    recipe = args.get("recipe")
    # With a recipe, the flags' defaults are the preset's: list what differs from it.
    default = TrainConfig.from_recipe(recipe, data="") if recipe in RECIPES else TrainConfig(data="")
    parts = ["python", "-m", "train.classifier", "--data", str(args.get("data", "?")), "--task", str(args.get("task", "?"))]
    if recipe in RECIPES:
        parts += ["--recipe", recipe]
    for f in fields(TrainConfig):
        if f.name in _SKIP or f.name not in args:
            continue
        v, d = args[f.name], getattr(default, f.name)
        if v == d:
            continue
        flag = "--" + _FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        if f.name == "pretrained":
            parts.append("--no-pretrained" if not v else "")
        elif isinstance(v, bool):
            if v:
                parts.append(flag)
        elif v is not None:
            parts += [flag, str(v)]
    aug, aug_d = args.get("augment") or {}, default.augment.to_dict()
    if aug.get("enabled") is False:
        parts.append("--no-augment")
    else:
        for k, flag in _AUG_FLAGS.items():
            if k in aug and aug[k] != aug_d[k]:
                parts += [f"--{flag}", str(aug[k])]
    if args.get("notes"):
        parts += ["--notes", args["notes"]]
    return " ".join(shlex.quote(p) for p in parts if p)


def _sets(card: ClassifierCard) -> dict[str, Mapping[str, Any]]:
    """The card's metric sets by their card key (``test``, ``test_tta4@youden_val``, ...)."""
    return {str(k): v for k, v in card.metrics.items()}


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _num(v: Any, nd: int = 4) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _tta_key(metrics: dict[str, Any], split: str) -> str | None:
    """The card's plain TTA metric set of ``split`` with the most views, if any."""
    keys = [mk for k in metrics if (mk := MetricKey.parse(k)) and mk.split == split and mk.tta > 1
            and mk.source == "training" and not mk.threshold and not mk.knn]
    return str(max(keys, key=lambda mk: mk.tta)) if keys else None


def metric_rows(card: ClassifierCard, split: str = "test") -> list[tuple[str, Mapping[str, Any]]]:
    """(label, metrics) rows for a split: plain, @Youden(val), TTA, TTA@Youden(val), then stored evaluations."""
    m = _sets(card)
    rows: list[tuple[str, Mapping[str, Any]]] = []
    tta = _tta_key(m, split)
    cut = "@0.5" if card.task == "binary" else "(argmax)"
    plain = MetricKey(split)
    for key, label in ((plain, f"plain {cut}"), (plain.with_(threshold="youden_val"), "plain @Youden(val)")):
        if str(key) in m:
            rows.append((label, m[str(key)]))
    if tta:
        tk = MetricKey.parse(tta)
        rows.append((f"TTA×{tk.tta} {cut}", m[tta]))
        if str(tk.with_(threshold="youden_val")) in m:
            rows.append((f"TTA×{tk.tta} @Youden(val)", m[str(tk.with_(threshold="youden_val"))]))
    for key in sorted(k for k in m if (mk := MetricKey.parse(k)) and mk.source == "evaluate" and mk.split == split):
        rows.append((f"`{key}` (train.evaluate)", m[key]))
    return rows


def _table(task: str, rows: list[tuple[str, Mapping[str, Any]]], classes: list[str]) -> list[str]:
    if task == "binary":
        out = ["| test | accuracy | sensitivity | specificity | precision | F1 | AUROC | ECE | threshold |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, m in rows:
            out.append(f"| {label} | {_pct(m.get('accuracy'))} | {_pct(m.get('sensitivity'))} | {_pct(m.get('specificity'))} | "
                       f"{_pct(m.get('precision'))} | {_num(m.get('f1'))} | {_num(m.get('auroc'))} | {_num(m.get('ece'))} | "
                       f"{_num(m.get('threshold'), 3)} |")
        return out
    head = " | ".join(f"{c} acc" for c in classes)
    out = [f"| test | accuracy | macro F1 | AUROC (OvR) | {head} | as binary: sens / spec | ECE |",
           "|---|---:|---:|---:|" + "---:|" * len(classes) + "---:|---:|"]
    for label, m in rows:
        pca = m.get("per_class_accuracy") or {}
        ab = m.get("as_binary") or {}
        per = " | ".join(_pct(pca.get(c)) for c in classes)
        out.append(f"| {label} | {_pct(m.get('accuracy'))} | {_num(m.get('f1_macro'))} | {_num(m.get('auroc_ovr'))} | {per} | "
                   f"{_pct(ab.get('sensitivity'))} / {_pct(ab.get('specificity'))} | {_num(m.get('ece'))} |")
    return out


def target_status(card: ClassifierCard) -> str:
    """Which targets the best of plain / TTA / Youden(val) test figures reach (never a test-chosen threshold)."""
    task = card.task or ""
    goals = TARGETS.get(task)
    rows = [m for label, m in metric_rows(card) if not label.startswith("`")]
    if not goals or not rows:
        return ""
    parts = []
    for name, goal in goals.items():
        best = max((m.get(name) or 0.0) for m in rows)
        parts.append(f"{name} ≥ {goal:g}: {'**met**' if best >= goal else 'not met'} (best {best:.4f})")
    return "; ".join(parts)


def entry_section(root: Path, status: EntryStatus) -> list[str]:
    card = status.info
    assert isinstance(card, ClassifierCard)
    t, ds, task = card.training, card.dataset, card.task or "?"
    synthetic = card.synthetic
    title = f"### `{status.id}`" + (" — SYNTHETIC demo data, not clinical" if synthetic else "")
    lines = [
        title,
        "",
        f"- task **{task}** · {card.architecture} · {card.input.describe() if card.input else 'input ?'}"
        + f" · pretrained: {card.pretrained_source or 'no (random init)'}"
        + (f" · frozen stages: {t.get('frozen_stages')}" if t.get("frozen_stages") else ""),
        f"- dataset `{ds.name}` ({'synthetic phantoms' if synthetic else ds.root}), images used "
        + ", ".join(f"{k} {v}" for k, v in ds.used.items())
        + f"; validation: {ds.val_fraction} of train patients (seed {ds.val_seed}), by patient",
        f"- device **{t.get('device')}** · world size {t.get('world_size', 1)} · {t.get('seconds_total', 0):.0f} s total "
        f"({t.get('seconds_decode', 0):.0f} s decode, {t.get('seconds_features', 0):.0f} s frozen-stage features"
        + (" (read from the feature cache)" if t.get("features_from_cache") else "")
        + ", "
        f"{t.get('seconds_train', 0):.0f} s training) · epochs run {t.get('epochs_run')} (selected: {t.get('best_epoch')} on validation) "
        f"· {t.get('images_per_second', 0):.1f} training images/s"
        + (" (trainable stages only, on cached frozen-stage features)" if t.get("frozen_stages") else ""),
        f"- command: `{command_from_args(t.get('args', {}))}`",
        f"- registry: `{root}` · created {card.created_at} · code {card.code_version}",
    ]
    if t.get("args", {}).get("notes"):
        lines.append(f"- notes: {t['args']['notes']}")
    # The targets are defined on kermany's official test split; elsewhere they would mislead.
    status_line = target_status(card) if "kermany" in ds.name.lower() and not synthetic else ""
    if status_line:
        lines.append(f"- targets on the official test split: {status_line}")
    lines += ["", *_table(task, metric_rows(card), list(card.classes)), ""]
    thr = card.thresholds
    if thr:
        lines += ["Thresholds (chosen on validation only): " + ", ".join(f"{k} = {v:.4f}" for k, v in thr.items()), ""]
    return lines


def summary_table(roots: list[Path]) -> list[str]:
    """One line per classifier entry: the figures a reader compares first."""
    rows = []
    for root in roots:
        for s in usable(list_entries(root), "classifier"):
            c = s.info
            assert isinstance(c, ClassifierCard)
            t, m = c.training, _sets(c)
            plain, tta_key = m.get("test") or {}, _tta_key(m, "test")
            tta = m.get(tta_key) or {} if tta_key else {}
            auroc = "auroc" if c.task == "binary" else "auroc_ovr"
            rows.append((c.task or "", c.created_at or "", (
                f"| `{s.id}`{' (synthetic)' if c.synthetic else ''} | {c.task} | {t.get('device')} | "
                f"{t.get('seconds_total', 0):.0f} | {_pct(plain.get('accuracy'))} | {_pct(tta.get('accuracy'))} | "
                f"{_num(plain.get(auroc))} | {_num(tta.get(auroc))} | {_pct(plain.get('specificity', (plain.get('as_binary') or {}).get('specificity')))} |"
            )))
    if not rows:
        return []
    head = ["| entry | task | device | seconds | accuracy | accuracy TTA | AUROC | AUROC TTA | specificity (normal) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    return head + [r[2] for r in sorted(rows, key=lambda r: (r[0], r[1]))]


def _matching_recipe(args: dict[str, Any]) -> str:
    """For a card trained without --recipe: the preset whose every field it has (``= name``), else a dash."""
    for name in ("cpu-baseline", "cpu-224", *RECIPES):
        fields = RECIPES.get(name, {})
        if name != "cpu-best" and fields and all(args.get(k) == v for k, v in fields.items()):
            return f"= {name}"
    return "—"


def recipe_row(card: ClassifierCard) -> str:
    """One line of the recipe table: recipe, command, train time, validation and test figures, lung focus."""
    t, m = card.training, _sets(card)
    task = card.task
    val, test = m.get("val") or {}, m.get("test") or {}
    tta_key = _tta_key(m, "test")
    tta = m.get(tta_key) or {} if tta_key else {}
    focus = card.lung_focus or {}
    lung = f"{_pct(focus.get('peak_inside'))} / {_pct(focus.get('mass_inside'))}" if focus else "—"
    ece = f"{_num(test.get('ece'), 3)} → {_num(test.get('ece_calibrated'), 3)}"
    recipe = card.recipe or _matching_recipe(t.get("args", {}))
    cmd = f"`{command_from_args(t.get('args', {}))}`"
    if task == "binary":
        points = []
        for name in ("default", "sens95_val", "youden_val"):
            pm = m.get(str(MetricKey("test", threshold=None if name == "default" else name)))
            if pm:
                mark = "**" if name == (card.threshold_source or "default") else ""
                points.append(f"{mark}{name}: {_pct(pm.get('accuracy'))} ({_pct(pm.get('sensitivity'))} / {_pct(pm.get('specificity'))}){mark}")
        figures = (f"{_num(val.get('auroc'))} | {_pct(test.get('accuracy'))} / {_pct(tta.get('accuracy'))} | "
                   f"{_num(test.get('auroc'))} / {_num(tta.get('auroc'))} | " + " · ".join(points))
    else:
        pca = test.get("per_class_accuracy") or {}
        figures = (f"{_pct(val.get('accuracy'))} | {_pct(test.get('accuracy'))} / {_pct(tta.get('accuracy'))} | "
                   f"{_num(test.get('auroc_ovr'))} / {_num(tta.get('auroc_ovr'))} | "
                   + " / ".join(_pct(v) for v in pca.values()) + " (recall n/b/v)")
    return f"| {recipe} | {task} | {cmd} | {t.get('seconds_total', 0) / 60:.1f} | {figures} | {ece} | {lung} |"


def issue14_status(card: ClassifierCard) -> str:
    """Issue 14's targets for one card: met / not met, at the threshold in use (binary) and on calibrated ECE."""
    task, m = card.task, _sets(card)
    goals = ISSUE14.get(task)
    if not goals or "test" not in m:
        return ""
    src = card.threshold_source if isinstance(card.threshold_source, str) else "default"
    op = None if src in ("default", "argmax") else src
    at = m.get(str(MetricKey("test", threshold=op))) or m["test"]
    tta_key = _tta_key(m, "test")
    tta_at = (m.get(str(MetricKey.parse(tta_key).with_(threshold=op))) or {}) if tta_key else {}
    have: dict[str, float | None] = {"accuracy": max(at.get("accuracy") or 0, tta_at.get("accuracy") or 0),
                                     "ece": m["test"].get("ece_calibrated", m["test"].get("ece"))}
    if task == "binary":
        have["auroc"] = max(m["test"].get("auroc") or 0, (m.get(tta_key) or {}).get("auroc") or 0)
        have["sensitivity"], have["specificity"] = at.get("sensitivity"), at.get("specificity")
    else:
        have["recall"] = min((at.get("per_class_accuracy") or {"?": 0}).values())
    parts = []
    for name, goal in goals.items():
        v = have.get(name)
        ok = v is not None and (v <= goal if name == "ece" else v >= goal)
        parts.append(f"{name} {'≤' if name == 'ece' else '≥'} {goal:g}: {'**met**' if ok else 'not met'} ({_num(v, 4)})")
    focus = card.lung_focus or {}
    if focus:
        ok = all((focus.get(k) or 0) >= v for k, v in LUNG_TARGET.items())
        parts.append(f"lung focus ≥ 80 % / 80 %: {'**met**' if ok else 'not met'} "
                     f"({_pct(focus.get('peak_inside'))} / {_pct(focus.get('mass_inside'))})")
    return "; ".join(parts)


def recipe_table(roots: list[Path]) -> list[str]:
    """The recipe table of issue 14: one row per real-data classifier card, oldest first per task."""
    rows = []
    for root in roots:
        for s in usable(list_entries(root), "classifier"):
            if isinstance(c := s.info, ClassifierCard) and not c.synthetic:
                rows.append((c.task or "", c.created_at or "", recipe_row(c)))
    if not rows:
        return []
    cards = [c for root in roots for s in usable(list_entries(root), "classifier") if isinstance(c := s.info, ClassifierCard)]
    status = [f"- `{c.id}` ({c.task}): {issue14_status(c)}" for c in cards if not c.synthetic and issue14_status(c)]
    head = [
        "| recipe | task | command | minutes here | val AUROC (binary) / accuracy (3-class) | test accuracy plain / TTA | "
        "test AUROC plain / TTA | test accuracy (sens / spec) at each validation-chosen threshold, **in use** · 3-class recall | "
        "test ECE raw → calibrated | "
        "lung focus: peak / mass inside |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    table = head + [r[2] for r in sorted(rows, key=lambda r: (r[0], r[1]))]
    return table + (["", "Issue 14 targets per card (best of plain / TTA at the threshold in use; ECE of the calibrated "
                         "plain probabilities):", "", *status] if status else [])


def _lever_name(r: dict[str, Any], seed: bool = True) -> str:
    return (f"{r['arch'].replace('tf_efficientnet_', '')} {r['size']} px · freeze {r['cut']} · {r['views']} views"
            + (" · strong aug" if r.get("strong_augment") else "") + (" · CLAHE" if r.get("clahe") else "")
            + (" · letters masked" if r.get("mask_letters") else "")
            + (f" · border {r['mask_border']:g} masked" if r.get("mask_border") else "")
            + (" · histogram matched" if r.get("hist_ref") else "")
            + (f" · crop {r['crop']}" if r.get("crop", 1.0) != 1.0 else "") + (f" · seed {r.get('seed', 0)}" if seed else ""))


def _lever_lines(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lever_table(path: Path) -> list[str]:
    """The lever screen of ``python -m bench.recipes --json FILE``: one row per (recipe, task) result line."""
    rows, commands = [], []
    for r in _lever_lines(path):
        tta = next((k for k in r if k.startswith("test_tta") and "@" not in k and not k.endswith(":probs")), None)
        lever = _lever_name(r)
        val, test, tt = r["val"], r["test"], r.get(tta) or {}
        if r["task"] == "binary":
            yv = r.get("test@youden_val") or {}
            fig = (f"{_num(val['auroc'])} | {_pct(test['accuracy'])} / {_pct(tt.get('accuracy'))} | {_num(test['auroc'])} / "
                   f"{_num(tt.get('auroc'))} | {_pct(test['sensitivity'])} / {_pct(test['specificity'])} @0.5; "
                   f"{_pct(yv.get('sensitivity'))} / {_pct(yv.get('specificity'))} @Youden(val)")
        else:
            pca = test["per_class_accuracy"]
            fig = (f"{_pct(val['accuracy'])} | {_pct(test['accuracy'])} / {_pct(tt.get('accuracy'))} | {_num(test['auroc_ovr'])} / "
                   f"{_num(tt.get('auroc_ovr'))} | " + " / ".join(_pct(v) for v in pca.values()))
        minutes = r["seconds_train"] / 60 if "seconds_train" in r else r["minutes_train"]
        lever += " †" if r.get("recovered") else ""
        rows.append(f"| {lever} | {r['task']} | {minutes:.1f} | {fig} | {_num(test['ece'], 3)} → "
                    f"{_num(test.get('ece_calibrated'), 3)} | {_pct(r['lung_peak80'])} / {_pct(r['lung_mass80'])} |")
        if r.get("command") and r["command"] not in commands:
            commands.append(r["command"])
    if not rows:
        return []
    out = [
        "| lever (tail trained on cached frozen features) | task | tail minutes | val AUROC / accuracy | test accuracy plain / TTA | "
        "test AUROC plain / TTA | test sens / spec · 3-class recall n/b/v | test ECE raw → calibrated | lung focus peak / mass (80 films) |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
        *rows,
    ]
    out += _recovered_note(_lever_lines(path))
    if commands:
        out += ["", "Commands of the rows that record theirs (each appends one line per cut, tail seed and task):", "",
                *(f"- `{c}`" for c in commands)]
    return out


def seed_spread_table(path: Path) -> list[str]:
    """Min–max over tail seeds of each lever that was trained with two or more seeds (same split, same cached maps)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in _lever_lines(path):
        groups.setdefault((_lever_name(r, seed=False), r["task"]), []).append(r)
    rows = []

    def rng(vals: list[float], f: Any) -> str:
        return f(min(vals)) if min(vals) == max(vals) else f"{f(min(vals))} – {f(max(vals))}"

    for (lever, task), rs in groups.items():
        seeds = sorted({r.get("seed", 0) for r in rs})
        if len(seeds) < 2:
            continue
        tta = next((k for k in rs[0] if k.startswith("test_tta") and "@" not in k and not k.endswith(":probs")), None)
        if task == "binary":
            val = rng([r["val"]["auroc"] for r in rs], _num)
            normal = rng([r["test"]["specificity"] for r in rs], _pct)
            auroc = rng([r["test"]["auroc"] for r in rs], _num)
        else:
            val = rng([r["val"]["accuracy"] for r in rs], _pct)
            normal = rng([r["test"]["per_class_accuracy"]["normal"] for r in rs], _pct)
            auroc = rng([r["test"]["auroc_ovr"] for r in rs], _num)
        acc_tta = rng([r[tta]["accuracy"] for r in rs if tta in r], _pct) if tta else "—"
        rows.append(f"| {lever} | {task} | {', '.join(map(str, seeds))} | {val} | {rng([r['test']['accuracy'] for r in rs], _pct)} | "
                    f"{acc_tta} | {auroc} | {normal} |")
    if not rows:
        return []
    return ["| lever | task | tail seeds | val AUROC / accuracy | test accuracy plain | test accuracy TTA | test AUROC plain | "
            "test specificity (binary, @0.5) / normal recall (3-class) |", "|---|---|---|---:|---:|---:|---:|---:|", *rows]


def ensemble_table(path: Path) -> list[str]:
    """The ensembles of ``python -m bench.ensembles --json FILE``: one row per ensemble, chosen and ranked on validation."""
    rows = []
    for e in _lever_lines(path):
        cost = f"{e['passes']} ({e['passes'] * e['tta']} with TTA×{e['tta']})"
        if e["task"] == "binary":
            fig = (f"{_num(e['val_auroc'])} / {_num(e.get('val_auroc_tta'))} | {_num(e['test_auroc'])} / {_num(e.get('test_auroc_tta'))} | "
                   f"{_pct(e['test_acc'])} / {_pct(e.get('test_acc_tta'))} | "
                   f"{_pct(e['test_acc_youden'])} ({_pct(e['sens_youden'])} / {_pct(e['spec_youden'])}); "
                   f"{_pct(e.get('test_acc_sens95'))} ({_pct(e.get('sens_sens95'))} / {_pct(e.get('spec_sens95'))})")
        else:
            fig = (f"{_pct(e['val_acc'])} / {_pct(e.get('val_acc_tta'))} | — | {_pct(e['test_acc'])} / {_pct(e.get('test_acc_tta'))} | "
                   "recall n/b/v " + " / ".join(_pct(v) for v in e["recall"]))
        rows.append(f"| {e['name']}{' †' if e.get('recovered') else ''} | {e['task']} | {cost} | {fig} |")
    if not rows:
        return []
    return _recovered_note(_lever_lines(path), before=False) + ["| ensemble (probabilities averaged) | task | forward passes per upload | val AUROC / accuracy plain / TTA | "
            "test AUROC plain / TTA | test accuracy @0.5 (argmax) plain / TTA | binary: test accuracy (sens / spec) "
            "@Youden(val); @sens95(val) · 3-class: test recall |", "|---|---|---|---:|---:|---:|---|", *rows]


def _recovered_note(records: list[dict[str, Any]], before: bool = True) -> list[str]:
    """A line saying which rows (†) were recovered from an earlier document rather than from their run's JSON line."""
    sources = sorted({r["recovered"] for r in records if r.get("recovered")})
    if not sources:
        return []
    line = (f"† {sum(1 for r in records if r.get('recovered'))} rows recovered from {', '.join(sources)}: their JSON lines "
            "(in the git-ignored registry-research/) were lost, so these records hold only the figures that document "
            "printed, at its precision.")
    return ["", line] if before else [line, ""]


# --- recovering the lever and ensemble rows of an earlier RESULTS.md (their JSON lines were lost) ----------------

#: The committed metric records the lever screen and ensemble tables are generated from (no probabilities, no pixels).
LEVERS_FILE = Path("docs/results/levers.jsonl")
ENSEMBLES_FILE = Path("docs/results/ensembles.jsonl")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _f(s: str) -> float | None:
    """A printed figure back to its value: '86.5%' → 0.865, '0.9985' → 0.9985, '—' → None."""
    s = s.strip()
    if s in ("—", ""):
        return None
    return round(float(s[:-1]) / 100, 6) if s.endswith("%") else float(s)


def _pair(s: str, sep: str = "/") -> list[float | None]:
    return [_f(x) for x in s.split(sep)]


def _table_after(md: str, heading: str) -> list[list[str]]:
    """The body rows (cells) of the first table after ``heading``."""
    i = md.find(heading)
    if i < 0:
        return []
    rows, started = [], False
    for line in md[i:].splitlines()[1:]:
        if line.startswith("|"):
            started = True
            rows.append(_cells(line))
        elif started:
            break
    return [r for r in rows[2:]]


def _parse_lever_name(name: str) -> dict[str, Any]:
    parts = name.split(" · ")
    arch, size, _ = parts[0].split()
    r: dict[str, Any] = {"arch": f"tf_efficientnet_{arch}", "size": int(size)}
    for p in parts[1:]:
        if p.startswith("freeze "):
            r["cut"] = int(p.split()[1])
        elif p.endswith(" views"):
            r["views"] = int(p.split()[0])
        elif p == "strong aug":
            r["strong_augment"] = True
        elif p == "CLAHE":
            r["clahe"] = True
        elif p.startswith("crop "):
            r["crop"] = float(p.split()[1])
        elif p.startswith("seed "):
            r["seed"] = int(p.split()[1])
        else:
            raise ValueError(f"unknown lever part {p!r} in {name!r}")
    return r


def _parse_lever_row(c: list[str], source: str) -> dict[str, Any]:
    """One printed lever-screen row → the record that prints it again (figures as printed, nothing else)."""
    r = {"recovered": source, **_parse_lever_name(c[0]), "task": c[1], "minutes_train": float(c[2])}
    acc, auroc, ece, lung = _pair(c[4]), _pair(c[5]), _pair(c[7], "→"), _pair(c[8])
    auc_key = "auroc" if r["task"] == "binary" else "auroc_ovr"
    test = {"accuracy": acc[0], auc_key: auroc[0], "ece": ece[0], "ece_calibrated": ece[1]}
    if r["task"] == "binary":
        r["val"] = {"auroc": _f(c[3])}
        at05, youden = c[6].split(";")
        test["sensitivity"], test["specificity"] = _pair(at05.replace("@0.5", ""))
        ys, ysp = _pair(youden.replace("@Youden(val)", ""))
        r["test@youden_val"] = {"sensitivity": ys, "specificity": ysp}
    else:
        r["val"] = {"accuracy": _f(c[3])}
        test["per_class_accuracy"] = dict(zip(("normal", "bacteria", "virus"), _pair(c[6]), strict=True))
    r["test"], r["test_tta"] = test, {"accuracy": acc[1], auc_key: auroc[1]}
    r["lung_peak80"], r["lung_mass80"] = lung
    return r


def _command_matches(cmd: str, r: dict[str, Any]) -> bool:
    """Whether ``python -m bench.recipes`` line ``cmd`` produces record ``r`` (one line per cut, tail seed and task)."""
    ap = argparse.ArgumentParser(add_help=False)
    for flag, kw in (("--arch", {"default": "tf_efficientnet_lite0"}), ("--size", {"type": int, "default": 224}),
                     ("--views", {"type": int, "default": 2}), ("--cuts", {"type": int, "nargs": "*", "default": [6]}),
                     ("--tasks", {"nargs": "*", "default": ["binary", "multiclass"]}), ("--seed", {"type": int, "default": 0}),
                     ("--tail-seeds", {"type": int, "nargs": "*", "default": None}),
                     ("--crop-fraction", {"type": float, "default": 1.0})):
        ap.add_argument(flag, **kw)
    for flag in ("--clahe", "--strong-augment"):
        ap.add_argument(flag, action="store_true")
    a, _ = ap.parse_known_args(shlex.split(cmd)[3:])
    return (a.arch == r["arch"] and a.size == r["size"] and a.views == r["views"] and r["cut"] in a.cuts
            and r["task"] in a.tasks and r.get("seed", 0) in (a.tail_seeds or [a.seed]) and a.clahe == bool(r.get("clahe"))
            and a.strong_augment == bool(r.get("strong_augment")) and a.crop_fraction == r.get("crop", 1.0))


def recover_levers(md: str, source: str) -> list[dict[str, Any]]:
    """The lever-screen rows of an earlier RESULTS.md as records, each with the listed command that produced it
    (attached only when exactly one listed command's flags produce that row)."""
    rows = [_parse_lever_row(c, source) for c in _table_after(md, "## Lever screen")]
    i = md.find("Commands of the rows that record theirs")
    commands = []
    for line in md[i:].splitlines()[1:] if i >= 0 else []:
        if line.startswith("- `python -m bench.recipes"):
            commands.append(line[3:-1])
        elif commands and not line.strip() == "":
            break
    for r in rows:
        hits = [c for c in commands if _command_matches(c, r)]
        if len(hits) == 1:
            r["command"] = hits[0]
    return rows


def recover_ensembles(md: str, source: str) -> list[dict[str, Any]]:
    """The ensemble rows of an earlier RESULTS.md as records (figures as printed)."""
    out = []
    for c in _table_after(md, "## Ensembles"):
        passes, rest = c[2].split(" (", 1)
        e: dict[str, Any] = {"recovered": source, "task": c[1], "name": c[0], "passes": int(passes),
                             "tta": int(rest.rsplit("×", 1)[1].rstrip(")"))}
        val, acc = _pair(c[3]), _pair(c[5])
        if e["task"] == "binary":
            auroc = _pair(c[4])
            youden, sens95 = c[6].split(";")
            e.update(val_auroc=val[0], val_auroc_tta=val[1], test_auroc=auroc[0], test_auroc_tta=auroc[1],
                     test_acc=acc[0], test_acc_tta=acc[1])
            for name, part in (("youden", youden), ("sens95", sens95)):
                a, sens_spec = part.strip().rstrip(")").split(" (")
                e[f"test_acc_{name}"] = _f(a)
                e[f"sens_{name}"], e[f"spec_{name}"] = _pair(sens_spec)
        else:
            e.update(val_acc=val[0], val_acc_tta=val[1], test_acc=acc[0], test_acc_tta=acc[1],
                     recall=_pair(c[6].replace("recall n/b/v", "")))
        out.append(e)
    return out


#: A hand-written block of docs/RESULTS.md between these markers survives regeneration (train.results keeps it).
NOTES_BEGIN = "<!-- notes: hand-written, kept by train.results -->"
NOTES_END = "<!-- /notes -->"


def kept_notes(text: str) -> str | None:
    """The hand-written block (markers included) of a previous RESULTS.md, if it has one."""
    i = text.find(NOTES_BEGIN)
    j = text.find(NOTES_END, i + 1) if i >= 0 else -1
    return text[i : j + len(NOTES_END)] if i >= 0 and j >= 0 else None


def build_markdown(roots: list[Path], levers: Path | None = None, ensembles: Path | None = None, notes: str | None = None) -> str:
    out = [
        "# Results",
        "",
        f"Generated by `python -m train.results {' '.join('--root ' + str(r) for r in roots)}"
        + (f" --levers {levers}" if levers is not None else "") + (f" --ensembles {ensembles}" if ensembles is not None else "")
        + "` from the registry cards "
        f"on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Do not edit by hand: rerun the command.",
        "",
        "Every number is on the dataset's `test` split (for kermany-224 the official 624-image test set). Epochs and "
        "thresholds were chosen on a patient-level validation split taken from `train/`; the test split was never used "
        "for a choice. `@Youden(val)` = the threshold maximising sensitivity + specificity − 1 on validation.",
        "",
        "Reference (Kermany et al., Cell 2018, normal vs pneumonia): accuracy 92.8%, sensitivity 93.2%, "
        "specificity 90.1%, AUROC 0.968. Targets here: binary accuracy ≥ 93% and AUROC ≥ 0.97; 3-class accuracy ≥ 85%.",
        "",
    ]
    summary = summary_table(roots)
    if summary:
        out += ["## Summary (test split)", "", *summary, ""]
    recipes = recipe_table(roots)
    if recipes:
        out += ["## Recipe table (issue 14)", "",
                "One row per real-data card. Validation figures chose the epoch, the temperature and the thresholds; "
                "the test columns were never used for a choice. Lung focus: HiResCAM (the app's map, stride 16) for the "
                "predicted class on 80 evenly spaced official test films; share of peaks and of map mass inside the lung "
                "box (rows 12–85 %, columns 10–90 %). Targets (issue 14): binary accuracy ≥ 92.8 %, AUROC ≥ 0.968, "
                "sensitivity ≥ 93 % and specificity ≥ 90 % at the validation-chosen operating point; 3-class accuracy "
                "≥ 85 % with every class ≥ 80 % recall; ECE ≤ 0.05; lung focus ≥ 80 % / 80 %.", "", *recipes, ""]
    if levers is not None and levers.is_file():
        table = lever_table(levers)
        if table:
            out += ["## Lever screen (issue 14, `python -m bench.recipes`)", "",
                    f"Generated from `{levers}`: each lever's tail trained the way `train_classifier` trains it, on frozen "
                    "stride-16 features cached once per (architecture, size, views); the same validation rules. "
                    "Calibrated ECE uses the temperature fitted on validation.", "", *table, ""]
        spread = seed_spread_table(levers)
        if spread:
            out += ["### Seed spread (tail seeds on the same split and cached maps)", "",
                    "Min – max over tail seeds (head initialisation, batch order, view draws). A lever beats the baseline "
                    "only if it clears this band on validation.", "", *spread, ""]
    if ensembles is not None and ensembles.is_file():
        table = ensemble_table(ensembles)
        if table:
            out += ["## Ensembles (issue 14, `python -m bench.ensembles`)", "",
                    f"Generated from `{ensembles}`: members' probabilities averaged (binary members with the 3-class "
                    "members' P(pneumonia) = P(bacteria) + P(virus)); thresholds chosen on validation. Forward passes per "
                    "upload count classifier passes; today's Predict page runs the binary and the 3-class model (2 passes, "
                    "8 with TTA), so an ensemble of the two costs nothing extra.", "", *table, ""]
    if notes:
        out += [notes, ""]
    for root in roots:
        statuses = list_entries(root)
        classifiers = usable(statuses, "classifier")
        broken = [s for s in statuses if not s.ok]
        out += [f"## Registry `{root}`", ""]
        if not root.is_dir():
            out += ["(folder absent)", ""]
            continue
        if not classifiers:
            out += ["No usable classifier entries.", ""]
        # Oldest first: the document reads as the sequence of runs.
        for task in ordered_tasks(str(c.info.task) for c in classifiers if c.info):
            for s in sorted((c for c in classifiers if c.info and c.info.task == task), key=lambda c: c.info.created_at or ""):
                out += entry_section(root, s)
        for s in broken:
            out += [f"- broken entry `{s.id}`: {s.reason}"]
        if broken:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _recover(old: Path, label: str, levers: Path, ensembles: Path) -> None:
    import json

    md = old.read_text()
    for path, records in ((levers, recover_levers(md, label)), (ensembles, recover_ensembles(md, label))):
        if path.is_file() and path.read_text().strip():
            raise SystemExit(f"{path} already holds lines: not recovering into it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"recovered {len(records)} rows from {old} into {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.results", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", action="append", default=None, help="registry root (repeatable; default $CXR_REGISTRY or ./registry)")
    p.add_argument("--out", default="docs/RESULTS.md")
    p.add_argument("--levers", default=None,
                   help=f"JSON lines of python -m bench.recipes --record (the lever screen table; committed: {LEVERS_FILE})")
    p.add_argument("--ensembles", default=None,
                   help=f"JSON lines of python -m bench.ensembles --record (the ensemble table; committed: {ENSEMBLES_FILE})")
    p.add_argument("--recover-from", default=None, metavar="OLD_RESULTS_MD",
                   help="once: write the lever and ensemble rows printed in an earlier RESULTS.md as records to --levers / "
                        "--ensembles (figures as printed; refuses files that already hold lines), then regenerate")
    p.add_argument("--recover-label", default=None, help="where OLD_RESULTS_MD came from (stored in each recovered record)")
    ns = p.parse_args(argv)
    roots = [Path(r) for r in (ns.root or [str(registry_root(None))])]
    out = Path(ns.out)
    if ns.recover_from:
        _recover(Path(ns.recover_from), ns.recover_label or ns.recover_from, Path(ns.levers or LEVERS_FILE),
                 Path(ns.ensembles or ENSEMBLES_FILE))
    notes = kept_notes(out.read_text()) if out.is_file() else None
    text = build_markdown(roots, Path(ns.levers) if ns.levers else None, Path(ns.ensembles) if ns.ensembles else None, notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    n = text.count("\n### ")
    print(f"wrote {out} ({n} classifier entries from {len(roots)} registr{'y' if len(roots) == 1 else 'ies'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
