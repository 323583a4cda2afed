"""Build the committed release registry from kermany-224: real models out of the box.

    python -m train.release --data ../shared/data/kermany-224 --out release/kermany-224

Steps, each with a progress bar and its time (seeds fixed):

1. train the binary and the 3-class classifier (``RELEASE_RECIPE``, the CPU recipe: frozen
   ImageNet stages, trained tail on cached features) into a work registry (``--work``,
   default ``build/release-<name>``; finished steps there are reused unless ``--fresh``);
2. index each classifier (embeddings, thumbnails, KNN metrics, t-SNE and UMAP in 2-D and 3-D);
3. fit the healthy-only detectors (feature Mahalanobis and 5-NN, the pixel autoencoder) and
   the chest X-ray guard;
4. write every entry into ``--out`` in compact form (``cxr_core.compact``): classifiers keep
   only their trained tensors in float16 over the pip ImageNet weights, embeddings float16,
   thumbnails JPEG. Each compaction is checked: test metrics of the compact classifier
   against the float32 one (plain and TTA, to the third decimal) and KNN accuracy with float16
   embeddings against float32; a check that fails stops the build;
5. write ``release.json`` (sha256 of every card: the release is read-only), ``SOURCE.md``
   (data citation and licence, entries, command, code version) and the size per file type,
   and fail when the release exceeds ``--budget-mb``.

Step 3 includes the feature reconstruction detector (``RELEASE_RECON``, docs/ANOMALY.md). A release
built before it existed gains it without a rebuild:

    python -m train.release --data ../shared/data/kermany-224 --out release/kermany-224 --threads 2 --add-detectors

fits (or reuses from the work registry) only the detectors the release lacks, copies them in, and
rewrites ``release.json`` and ``SOURCE.md`` (every other entry stays byte for byte; the manifest keeps
the full build's command, which reproduces the whole release, and lists the addition under ``updates``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.cards import Card, ClassifierCard, DetectorCard, read_card
from cxr_core.progress import Progress
from cxr_core.registry import (
    RELEASE_MANIFEST,
    Entry,
    RegistryError,
    code_version,
    list_entries,
    read_release_manifest,
    select,
    sha256_file,
    write_entry,
)

#: The classifier recipe of the release (train.classifier flags). The CPU recipe measured in
#: docs/RESULTS.md: six frozen ImageNet stages, the tail trained on cached features at 160 px.
RELEASE_RECIPE: dict[str, Any] = dict(
    architecture="tf_efficientnet_lite0", pretrained=True, size=160, epochs=8, lr=1e-3, label_smoothing=0.1,
    patience=4, freeze_stages=6, train_views=2, tta=4, device="cpu", seed=0,
)
#: The 5-NN detector carries its whole healthy bank (1,341 x 1,408 float32, 7.6 MB), three times
#: Mahalanobis's size for the same validation AUROC (0.961 vs 0.959, docs/ANOMALY.md): left out
#: of the size-capped release; ``python -m train.anomaly`` still fits it for a user registry.
LEAVE_OUT = {"features-knn": "its healthy bank is 7.6 MB, three times the Mahalanobis detector's, for the same "
                             "validation AUROC (docs/ANOMALY.md); fit it with python -m train.anomaly"}
#: The feature reconstruction detector of the release (``cxr_core.feature_recon.ReconConfig`` fields over its
#: defaults, the recipe chosen on validation in docs/ANOMALY.md) at the classifiers' input size: its taps
#: (blocks 3-4) are inside their frozen ImageNet stages, so the Predict page takes its feature maps from the
#: classification pass (``feature_recon.STAGE_HANDOFF``). Blocks 3-4: validation AUROC 0.9540 (blocks 2-4: 0.9535;
#: at 224 px 0.934).
RELEASE_RECON: dict[str, Any] = {"size": RELEASE_RECIPE["size"], "layers": ("3", "4")}
#: Metrics that must agree between the float32 and the compact (float16) classifier.
CHECKED_METRICS = ("accuracy", "auroc", "auroc_ovr", "sensitivity", "specificity")


@dataclass
class ReleaseConfig:
    """One release build; recorded in the manifest."""

    data: str
    out: str
    work: str | None = None
    recipe: dict[str, Any] = field(default_factory=lambda: dict(RELEASE_RECIPE))
    thumb_size: int = 64
    thumb_quality: int = 80
    budget_mb: float = 40.0
    #: Detectors left out of the release (by card "detector"), each with the reason SOURCE.md gives.
    leave_out: dict[str, str] = field(default_factory=lambda: dict(LEAVE_OUT))
    #: The feature reconstruction detector's recipe (``ReconConfig`` fields over its defaults).
    recon: dict[str, Any] = field(default_factory=lambda: dict(RELEASE_RECON))
    max_per_split: int | None = None  # quick builds (tests); a real release uses every image
    fresh: bool = False
    threads: int | None = None
    command: str = ""

    @property
    def name(self) -> str:
        return Path(self.out).name

    @property
    def work_root(self) -> Path:
        return Path(self.work or f"build/release-{self.name}")


class Steps:
    """Runs named steps, printing each one's time; the times go into the manifest.

    The times are kept in the work registry (``_seconds.json``): a step whose results are reused
    from an earlier run reports the time it took then, so the manifest states the build's cost.
    """

    def __init__(self, work_root: Path, log: Callable[[str], None]):
        self.path = work_root / "_seconds.json"
        self.log = log
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, fn: Callable[[], Any], *, reused: bool = False) -> Any:
        self.log(f"== {name}" + (" (reused from the work registry)" if reused else ""))
        t0 = time.perf_counter()
        out = fn()
        took = round(time.perf_counter() - t0, 1)
        if not reused or name not in self.seconds:
            self.seconds[name] = took
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.seconds, indent=2))
        self.log(f"== {name}: {took:.1f}s" + (f" (built in {self.seconds[name]:.1f}s)" if reused else ""))
        return out


# --- steps 1-3: the ordinary registry, in the work folder ------------------------------------------


def train_classifiers(cfg: ReleaseConfig, progress: Progress | None, log: Callable[[str], None]) -> dict[str, Entry]:
    from cxr_core.training import TrainConfig, train_classifier

    made = {}
    for task in ("binary", "multiclass"):
        entry = select(list_entries(cfg.work_root), "classifier", task)
        if entry is None:
            tc = TrainConfig(data=cfg.data, task=task, out=str(cfg.work_root), max_per_split=cfg.max_per_split,
                             feature_cache=str(cfg.work_root / "_features"), threads=cfg.threads,
                             notes=f"release {cfg.name}", **cfg.recipe)
            entry = train_classifier(tc, progress=progress, log=log)
        else:
            log(f"reusing {entry.id}")
        made[task] = entry
    return made


def index_classifiers(cfg: ReleaseConfig, classifiers: dict[str, Entry], progress: Progress | None,
                      log: Callable[[str], None]) -> None:
    from cxr_core.reference import IndexConfig, build_index

    for entry in classifiers.values():
        if entry.has("index.npz"):
            log(f"reusing the index of {entry.id}")
            continue
        build_index(entry, cfg.data, IndexConfig(thumb_size=cfg.thumb_size, max_per_split=cfg.max_per_split,
                                                 seed=0, device="cpu"), progress, log)


def _anomaly_config(cfg: ReleaseConfig, detector: str) -> Any:
    from cxr_core.detector_training import AnomalyConfig
    from cxr_core.feature_recon import ReconConfig

    return AnomalyConfig(data=cfg.data, out=str(cfg.work_root), detector=detector, max_per_split=cfg.max_per_split,
                         notes=f"release {cfg.name}", recon=ReconConfig(**cfg.recon))


def is_recon(info: Any) -> bool:
    """Whether a typed card (``Entry.info``) is a feature reconstruction detector's."""
    return isinstance(info, DetectorCard) and info.method == "feature_recon"


def is_release_recon(info: Any, cfg: ReleaseConfig) -> bool:
    """Whether a typed card is the feature reconstruction detector of the release's recipe (``cfg.recon``)."""
    from cxr_core.feature_recon import ReconConfig

    return is_recon(info) and ReconConfig.from_dict(dict(info.config)) == ReconConfig(**cfg.recon)


def fit_recon(cfg: ReleaseConfig, progress: Progress | None, log: Callable[[str], None]) -> list[Entry]:
    """The release's feature reconstruction detector: reused from the work registry, else fitted there."""
    from cxr_core.detector_training import run

    found = [s.entry() for s in list_entries(cfg.work_root) if is_release_recon(s.info, cfg)]
    if found:
        log(f"reusing {found[0].id}")
        return found[:1]
    return run(_anomaly_config(cfg, "recon"), progress, log)


def fit_detectors(cfg: ReleaseConfig, progress: Progress | None, log: Callable[[str], None]) -> list[Entry]:

    from cxr_core.detector_training import run

    have = [s for s in list_entries(cfg.work_root) if isinstance(s.info, DetectorCard)]
    if not have:
        return run(_anomaly_config(cfg, "all"), progress, log)
    log(f"reusing {len(have)} detectors")
    # A feature reconstruction detector of another recipe (an older work registry) is not the release's.
    made = [s.entry() for s in have if not is_recon(s.info) or is_release_recon(s.info, cfg)]
    if not any(is_release_recon(e.info, cfg) for e in made):
        made += fit_recon(cfg, progress, log)
    return made


# --- step 4: compact copies, each checked ------------------------------------------------------------


def _close(a: Any, b: Any, places: int = 3) -> bool:
    return a is None and b is None or (a is not None and b is not None and round(float(a), places) == round(float(b), places))


def test_metrics(entry: Entry, cfg: ReleaseConfig, progress: Progress | None) -> dict[str, dict[str, Any]]:
    """Test metrics, plain and TTA, through train.evaluate (the same path for both copies)."""
    from train.evaluate import evaluate_entry

    # Kept by weights hash in the work registry: a rerun of the compaction step (minutes per pass on
    # two cores) evaluates only what changed.
    tta = int(cfg.recipe.get("tta", 4))
    card = entry.classifier_card
    key = f"{card.file_sha256('weights.safetensors')}-{json.dumps(card.weights_base, sort_keys=True)}-{tta}"
    path = cfg.work_root / "_eval_cache.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cache:
        cache[key] = evaluate_entry(entry, cfg.data, "test", tta=tta, device="cpu", progress=progress).metrics
        path.write_text(json.dumps(cache))
    return cache[key]


def metric_differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> tuple[dict, dict]:
    """Side-by-side ``CHECKED_METRICS`` of two metric sets, and those that differ at the third decimal."""
    rows = {key: {m: [a[key].get(m), b[key].get(m)] for m in CHECKED_METRICS if m in a[key]} for key in a}
    bad = {f"{k}.{m}": v for k, r in rows.items() for m, v in r.items() if not _close(*v)}
    return rows, bad


def probe_images(size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """Deterministic prepared inputs (N, S, S) uint8 for the data-free reproduction check: smoothed noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8)).astype(np.float32)
    return np.stack([np.kron(c, np.ones((size // 8 + 1, size // 8 + 1)))[:size, :size] for c in coarse]).astype(np.uint8)


def probe_logits(clf: Any, n: int = 4, seed: int = 0) -> dict[str, Any]:
    """The float32 model's logits on :func:`probe_images` (``clf``: a ``LoadedClassifier``): the
    compact copy must reproduce them."""
    import torch

    from cxr_core.preprocess import normalize, to_float

    x = normalize(to_float(torch.from_numpy(probe_images(clf.spec.size, n, seed))), clf.spec)
    with torch.inference_mode():
        logits = clf.model(x.contiguous(memory_format=torch.channels_last)).float()
    return {"inputs": f"train.release.probe_images(size={clf.spec.size}, n={n}, seed={seed})", "n": n, "seed": seed,
            "logits_float32": logits.tolist()}


def compact_index(work: Entry, cfg: ReleaseConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """index.npz with float16 embeddings (KNN accuracy checked) and the JPEG thumbnails."""
    from cxr_core.compact import THUMBS_JPEG, encode_thumbs
    from cxr_core.neighbors import default_k
    from cxr_core.reference import knn_split_metrics

    z = work.load_npz("index.npz")
    task, classes = work.task or "binary", work.classes
    k = int(work.classifier_card.index.get("k") or default_k(task))
    emb16 = z["embeddings"].astype(np.float16)
    full = knn_split_metrics(task, classes, z["embeddings"], z["targets"], z["splits"], k)
    half = knn_split_metrics(task, classes, emb16.astype(np.float32), z["targets"], z["splits"], k)
    rows = {key: [full[key]["vote_accuracy"], half[key]["vote_accuracy"]] for key in full}
    if any(a != b for a, b in rows.values()):
        raise RegistryError(f"float16 embeddings change KNN accuracy for {work.id}: {rows}")
    thumbs = np.asarray(work.load_npy("thumbs.npy"))
    arrays = {"index.npz": {**z, "embeddings": emb16}, THUMBS_JPEG: encode_thumbs(thumbs, cfg.thumb_quality)}
    check = {"knn_vote_accuracy_float32_vs_float16": rows, "embeddings": "float16",
             "thumbnails": {"format": "jpeg", "quality": cfg.thumb_quality, "pixels": list(thumbs.shape[1:]),
                            "n": int(thumbs.shape[0])}}
    return arrays, check


def compact_classifier(work: Entry, cfg: ReleaseConfig, progress: Progress | None, log: Callable[[str], None]) -> Entry:
    """The trained tensors over the pip weights, float16 when that leaves every test metric unchanged at
    the third decimal against the float32 model, float32 otherwise; the index compacted and checked."""
    import torch

    from cxr_core.compact import trained_part
    from cxr_core.inference import load_classifier

    clf = load_classifier(work)
    model, card = clf.model, work.classifier_card
    arrays, index_check = compact_index(work, cfg)
    if work.has("projection.npz"):
        arrays["projection.npz"] = work.load_npz("projection.npz")
    reference = test_metrics(work, cfg, progress)
    rejected: dict[str, Any] = {}
    for dtype in (torch.float16, torch.float32):
        kept, base = trained_part(model, str(card.architecture), card.num_outputs, card.drop_rate, dtype)
        new_card = _portable(replace(card, weights_base=base), cfg)
        entry = write_entry(cfg.out, new_card, weights=kept, arrays=arrays, entry_id=work.id, compress=True)
        rows, bad = metric_differences(reference, test_metrics(entry, cfg, progress))
        log(f"{work.id}: {len(kept)} trained tensors in {base['dtype']} ({base['n_tensors']} from {base['package']}); "
            + (f"changes test metrics {bad}" if bad else "test metrics equal to 3 decimals"))
        if not bad:
            break
        if dtype == torch.float32:
            raise RegistryError(f"the compact copy of {work.id} changes test metrics even in float32: {bad}")
        rejected = {"float16": bad}
        shutil.rmtree(entry.path)
    check = {"split": "test", "float32_vs_compact": rows, "equal_to_3_decimals": True, "weights_dtype": base["dtype"],
             "rejected": rejected} | index_check | {"probe": probe_logits(clf)}
    log(f"  KNN accuracy float32 vs float16 embeddings: {index_check['knn_vote_accuracy_float32_vs_float16']}")
    return _with_release_check(entry, check)


def compact_detector(work: Entry, cfg: ReleaseConfig) -> Entry:
    """Detectors are small: copied unchanged (float32), their scores with them."""
    arrays = {name: work.load_npz(name) for name in work.info.files if name.endswith(".npz")}
    weights = work.load_weights() if work.has("weights.safetensors") else None
    card = _portable(work.info, cfg)
    return write_entry(cfg.out, card, weights=weights, arrays=arrays, entry_id=work.id, compress=True)


def _portable(card: Card, cfg: ReleaseConfig) -> Card:
    """The card with the build machine's dataset paths replaced by the one given on the command line
    (relative to the repository: the app finds full-size films there when ../shared is beside it),
    and the release command recorded."""
    card = replace(card, files={}, dataset=replace(card.dataset, root=cfg.data),
                   extra={**card.extra, "release": {"name": cfg.name, "command": cfg.command}})
    if isinstance(card, ClassifierCard) and card.index:
        card = replace(card, index={**card.index, "data_root": cfg.data})
    return card


def _with_release_check(entry: Entry, check: dict[str, Any]) -> Entry:
    # The release is written once and then sealed by the manifest; until then its cards are ordinary.
    from cxr_core.registry import update_info

    update_info(entry, lambda c: replace(c, release_check=check))
    return entry


# --- step 5: manifest, SOURCE.md, budget --------------------------------------------------------------


def sizes_by_type(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            kind = "thumbnails (JPEG in .npz)" if p.name.startswith("thumbs") else p.suffix or p.name
            out[kind] = out.get(kind, 0) + p.stat().st_size
    return out


def write_manifest(cfg: ReleaseConfig, command: str, seconds: dict[str, float],
                   update: dict[str, Any] | None = None) -> dict[str, Any]:
    """``release.json``; with ``update`` (an ``--add-detectors`` run), the existing manifest keeps its build's
    date, code version, command and configuration and lists the update."""
    root = Path(cfg.out)
    for lock in root.glob("*/.lock"):
        lock.unlink()
    cards = {d.name: sha256_file(d / "card.json") for d in sorted(root.iterdir()) if (d / "card.json").is_file()}
    manifest = {
        "name": cfg.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "command": command,
        "config": asdict(cfg),
        "seconds": seconds,
        "dataset": {"name": "kermany-224", "citation": CITATION, "licence": "CC BY 4.0"},
        "cards": cards,
    }
    if update is not None:
        before = read_release_manifest(root)
        manifest.update({k: before[k] for k in ("created_at", "code_version", "command", "config") if k in before})
        manifest["config"] = {**manifest["config"], "recon": cfg.recon}
        manifest["updates"] = [*before.get("updates", []), update]
    (root / RELEASE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


CITATION = ("Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by "
            "Image-Based Deep Learning. Cell 172(5):1122-1131.e9, 2018. doi:10.1016/j.cell.2018.02.010. "
            "Data: Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
            "Images for Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2")


def _entry_line(card: Card) -> str:
    test = card.split_metrics("test")
    if isinstance(card, ClassifierCard):
        fig = f"test accuracy {test.get('accuracy', float('nan')):.3f}, AUROC {test.get('auroc') or test.get('auroc_ovr') or float('nan'):.3f}"
        size = card.input.size if card.input else None
        return (f"- `{card.id}`: {card.task} classifier ({card.architecture}, {size} px), {fig}; "
                "embedding index with thumbnails and t-SNE/UMAP maps")
    auroc = test.get("auroc")
    rates = card.false_alarm_rate if isinstance(card, DetectorCard) else {}
    fig = f"test AUROC {auroc:.3f}" if isinstance(auroc, float) else "false alarms " + json.dumps(dict(rates))
    return f"- `{card.id}`: {card.name} ({card.task}), {fig}"


def write_source_md(cfg: ReleaseConfig, manifest: dict[str, Any], sizes: dict[str, int]) -> None:
    root = Path(cfg.out)
    cards = [read_card(json.loads((root / i / "card.json").read_text())) for i in manifest["cards"]]
    classifiers = [c for c in cards if isinstance(c, ClassifierCard)]
    total = sum(sizes.values())
    lines = [
        f"# Release registry `{cfg.name}`",
        "",
        "Models, reference thumbnails and detectors trained on real pediatric chest X-rays, served by `make run`.",
        "Research use, not a medical device.",
        "",
        "## Data and licence",
        "",
        f"Trained on `kermany-224`, a 224-px copy of the Kermany / ZhangLab chest X-ray set. {CITATION}.",
        "Licence: **CC BY 4.0** (https://creativecommons.org/licenses/by/4.0/). The weights, embeddings and "
        f"{cfg.thumb_size}x{cfg.thumb_size}-px thumbnails here are derived from those images and are redistributed "
        "under the same licence, with this attribution. Pediatric (1-5 years) anterior-posterior films of one hospital "
        "(Guangzhou Women and Children's Medical Center): adult films and films from other hospitals are out of scope.",
        "",
        "## Entries",
        "",
        *[_entry_line(c) for c in cards],
        "",
        "## How it was built",
        "",
        f"- command: `{manifest['command']}`",
        f"- code version: `{manifest['code_version']}`, built {manifest['created_at']}",
        "- seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in manifest["seconds"].items()),
        "- classifiers: only the trained tensors, over the ImageNet weights of the pip package named in each "
        "card's `weights_base` (checked by sha256 at load time), in float16 where that leaves every test metric "
        "unchanged at the third decimal, else float32; the compact copy's test metrics equal the float32 model's "
        "to the third decimal (`release_check` in each card)",
        *[f"  - `{c.id}`: weights {c.release_check['weights_dtype']}"
          + (f" (float16 changed {c.release_check['rejected']['float16']})" if c.release_check.get("rejected") else "")
          for c in classifiers],
        *[f"- thumbnails: {t['n']:,} per index, {t['pixels'][0]}x{t['pixels'][1]} px, JPEG quality {t['quality']}"
          for t in [c.release_check["thumbnails"] for c in classifiers][:1]],
        *[f"- left out: the `{name}` detector, {why}" for name, why in cfg.leave_out.items()],
        *[f"- added on {u['at']} by `{u['command']}` (code version `{u['code_version']}`, {u['seconds']:.0f} s): "
          + ", ".join(f"`{i}`" for i in u["added"])
          + "".join(f" (replacing `{i}`)" for i in u.get("replaced", []))
          + "; every other entry is byte for byte the build above, whose command also fits these"
          for u in manifest.get("updates", [])],
        "",
        f"## Size ({total / 1e6:.1f} MB of at most {cfg.budget_mb:.0f} MB)",
        "",
        "| file type | bytes |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])],
        "",
    ]
    (root / "SOURCE.md").write_text("\n".join(lines))


# --- the whole build -------------------------------------------------------------------------------


def build_release(cfg: ReleaseConfig, progress: Progress | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)  # a release is rebuilt whole, never patched
    if cfg.fresh and cfg.work_root.exists():
        shutil.rmtree(cfg.work_root)
    steps = Steps(cfg.work_root, log)

    def have(kinds: tuple[str, ...], n: int, file: str | None = None) -> bool:
        found = [s for s in list_entries(cfg.work_root, check_hashes=False)
                 if s.info and s.info.kind in kinds and (file is None or s.info.has(file))]
        return len(found) >= n

    classifiers = steps.run("train classifiers", lambda: train_classifiers(cfg, progress, log),
                            reused=have(("classifier",), 2))
    steps.run("index classifiers", lambda: index_classifiers(cfg, classifiers, progress, log),
              reused=have(("classifier",), 2, "index.npz"))
    detectors = steps.run("detectors and guard", lambda: fit_detectors(cfg, progress, log),
                          reused=have(("detector", "autoencoder"), 1))
    steps.run("compact classifiers", lambda: [compact_classifier(e, cfg, progress, log) for e in classifiers.values()])
    kept = [e for e in detectors if e.detector_card.detector not in cfg.leave_out]
    for e in detectors:
        if (name := e.detector_card.detector) in cfg.leave_out:
            log(f"leaving out {e.id} ({e.detector_card.label}): {cfg.leave_out[name]}")
    steps.run("copy detectors", lambda: [compact_detector(e, cfg) for e in kept])
    manifest = write_manifest(cfg, cfg.command, steps.seconds)
    sizes = sizes_by_type(out)
    write_source_md(cfg, manifest, sizes)
    sizes = sizes_by_type(out)
    total = sum(sizes.values())
    for kind, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        log(f"  {kind:<28}{n / 1e6:8.2f} MB")
    log(f"release {out}: {total / 1e6:.2f} MB in all (budget {cfg.budget_mb:.0f} MB), built in {sum(steps.seconds.values()):.0f}s")
    if total > cfg.budget_mb * 1e6:
        raise RegistryError(f"the release is {total / 1e6:.2f} MB, over its budget of {cfg.budget_mb:.0f} MB")
    return manifest


def add_detectors(cfg: ReleaseConfig, progress: Progress | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the detectors an existing release lacks (its feature reconstruction detector) and copy them in.

    A feature reconstruction detector of another recipe (an earlier addition) is replaced; every other entry is
    left byte for byte; ``release.json`` keeps the build's command (which fits
    these detectors too) and records this run under ``updates``; ``SOURCE.md`` is rewritten.
    """
    out = Path(cfg.out)
    before = read_release_manifest(out)
    if not before.get("cards"):
        raise RegistryError(f"{out} is not a built release (no {RELEASE_MANIFEST}): build it whole first")
    present = list_entries(out)
    if any(is_release_recon(s.info, cfg) for s in present):
        log(f"{out} already holds the feature reconstruction detector of this recipe; nothing to add")
        return before
    add_command, cfg.command = cfg.command, str(before.get("command", cfg.command))
    version = code_version()  # read before the release folder changes (git describe would call it dirty)
    t0 = time.perf_counter()
    fitted = fit_recon(cfg, progress, log)
    added = [compact_detector(e, cfg) for e in fitted]
    # A feature reconstruction detector of an earlier recipe (an earlier --add-detectors) is replaced, after the
    # new one is written (its card's code version is then read with nothing of the release removed yet).
    stale = [s.id for s in present if is_recon(s.info)]
    for entry_id in stale:
        log(f"replacing {entry_id} (another feature reconstruction recipe)")
        shutil.rmtree(out / entry_id)
    took = round(time.perf_counter() - t0, 1)
    # The build's cost per step: fitting the detector (its card's time, also when reused from the work registry).
    fit_s = sum(float(e.info.training.get("seconds_total", 0.0)) for e in fitted)
    seconds = {**before.get("seconds", {}), "feature reconstruction detector": round(fit_s, 1)}
    update = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "code_version": version,
              "command": add_command, "added": [e.id for e in added], "seconds": took}
    if stale:
        update["replaced"] = stale
    manifest = write_manifest(cfg, cfg.command, seconds, update=update)
    write_source_md(cfg, manifest, sizes_by_type(out))
    total = sum(sizes_by_type(out).values())
    log(f"release {out}: added {', '.join(update['added'])}; {total / 1e6:.2f} MB in all (budget {cfg.budget_mb:.0f} MB)")
    if total > cfg.budget_mb * 1e6:
        raise RegistryError(f"the release is {total / 1e6:.2f} MB, over its budget of {cfg.budget_mb:.0f} MB")
    return manifest


def main(argv: list[str] | None = None) -> int:
    from ._cli import tqdm_progress

    p = argparse.ArgumentParser(prog="python -m train.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="kermany-224 (Kaggle layout)")
    p.add_argument("--out", default="release/kermany-224", help="release folder (replaced whole)")
    p.add_argument("--work", default=None, help="work registry (default build/release-<name>); finished steps are reused")
    p.add_argument("--fresh", action="store_true", help="start the work registry from scratch")
    p.add_argument("--epochs", type=int, default=RELEASE_RECIPE["epochs"])
    p.add_argument("--budget-mb", type=float, default=40.0)
    p.add_argument("--thumb-size", type=int, default=64)
    p.add_argument("--max-per-split", type=int, default=None, help="cap images per split (quick builds, not a release)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--add-detectors", action="store_true",
                   help="fit only the detectors an existing release lacks (its feature reconstruction detector) and "
                        "add them, leaving every other entry byte for byte")
    ns = p.parse_args(argv)
    cfg = ReleaseConfig(data=ns.data, out=ns.out, work=ns.work, fresh=ns.fresh, budget_mb=ns.budget_mb,
                        thumb_size=ns.thumb_size, max_per_split=ns.max_per_split, threads=ns.threads,
                        recipe={**RELEASE_RECIPE, "epochs": ns.epochs})
    cfg.command = "python -m train.release " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    progress, close = tqdm_progress()
    if ns.add_detectors and ns.threads:
        import torch

        torch.set_num_threads(ns.threads)
    try:
        (add_detectors if ns.add_detectors else build_release)(cfg, progress)
    except (RegistryError, ValueError, FileNotFoundError) as e:
        close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
