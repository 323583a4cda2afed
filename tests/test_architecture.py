"""The code's shape, as docs/ARCHITECTURE.md states it: checked so that it stays true.

- cxr_core never imports Streamlit, pages or the training scripts;
- no import cycle among cxr_core modules, counting imports made inside functions;
- no function in cxr_core or pages longer than 60 lines;
- every cxr_core module is listed in the package docstring and in docs/ARCHITECTURE.md;
- a card's JSON is read and written only in cxr_core/cards.py (and stored by the registry): everything
  else uses the typed cards;
- every architecture is one ArchSpec whose layer names resolve on the built network.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import cxr_core
from cxr_core.archs import ARCH_SPECS, final_layer_name, named_stages, named_steps

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "cxr_core"
MAX_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(CORE.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Modules ``name`` imports anywhere in its file (top level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_cxr_core_imports_neither_streamlit_nor_pages_nor_train() -> None:
    for name, path in _modules().items():
        bad = {m for m in _imports(name, path) if m.split(".")[0] in ("streamlit", "pages", "train")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycle_in_cxr_core() -> None:
    mods = _modules()
    graph = {n: {m for m in _imports(n, p) if m in mods and m != n and not n.startswith(m + ".")} for n, p in mods.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m):], m]))
            if m not in state:
                visit(m, [*path, m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_no_function_in_cxr_core_or_pages_is_longer_than_60_lines() -> None:
    files = [*CORE.rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "home.py", ROOT / "app.py"]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_every_module_is_listed_in_the_package_docstring_and_the_architecture_doc() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    top = {n.split(".")[1] for n in _modules() if n.count(".") >= 1}
    missing_init = sorted(m for m in top if f"``{m}``" not in (cxr_core.__doc__ or ""))
    missing_doc = sorted(m for m in top if f"`{m}`" not in doc and f"cxr_core/{m}" not in doc)
    assert not missing_init, f"cxr_core/__init__.py does not list {missing_init}"
    assert not missing_doc, f"docs/ARCHITECTURE.md does not mention {missing_doc}"


#: Dict-style access to a card: ``card["x"]``, ``card.get("x")``, ``entry.card.items()``, ``s.card or {}``.
_CARD_DICT = re.compile(r"\bcard\s*(\[|\.get\(|\.items\(|\.keys\(|\.setdefault\(|or \{\})")
#: The card's JSON layout lives in cards.py; the registry stores and verifies it, overlay.py lays the user's
#: saved settings over it, report.py hashes it whole.
_CARD_JSON_MODULES = {"cxr_core/cards.py", "cxr_core/registry.py", "cxr_core/overlay.py"}


def test_card_json_is_read_only_through_the_typed_cards() -> None:
    files = [*CORE.rglob("*.py"), *(ROOT / "pages").rglob("*.py"), *(ROOT / "train").rglob("*.py"),
             *(ROOT / "bench").rglob("*.py"), ROOT / "home.py", ROOT / "app.py"]
    found = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        if rel in _CARD_JSON_MODULES:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _CARD_DICT.search(line.split("#")[0]):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "card JSON read outside cxr_core/cards.py (use entry.info / the typed cards):\n" + "\n".join(found)


@pytest.mark.parametrize("name", list(ARCH_SPECS))
def test_every_arch_spec_names_layers_its_network_has(name: str) -> None:
    spec = ARCH_SPECS[name]
    model = spec.build(3, 0.0)
    modules = dict(model.named_modules())
    steps = named_steps(spec, model)
    assert steps and all(n in modules for n, _ in steps)
    assert final_layer_name(spec, model) in modules
    assert spec.fine_layer is None or spec.fine_layer in modules
    for group in spec.randomisation:
        assert all(n in modules for n in group), group
    if spec.stages is not None:
        stem, stages, post = named_stages(spec, model)
        assert [n for n, _ in [*stem, *stages, *post]] == [n for n, _ in steps]


def test_a_new_architecture_is_one_table_entry(monkeypatch) -> None:
    """Register timm's mobilenetv2_050 with one ArchSpec: building, stages, CAM layers, frozen-trunk
    training splits and feature taps all work without touching any other module."""
    from functools import partial

    import numpy as np
    import torch

    from cxr_core.archs import ArchSpec, _timm
    from cxr_core.config import InputSpec
    from cxr_core.explain import Explainer
    from cxr_core.models import (
        create_model,
        default_cam_layer,
        feature_steps,
        gradcam_layer_choices,
        model_stages,
    )
    from cxr_core.training import split_model

    spec = ArchSpec(
        name="mobilenetv2_050", build=partial(_timm, "mobilenetv2_050"), load_imagenet=None,
        imagenet_norm=((0.5,) * 3, (0.5,) * 3), stem=("conv_stem", "bn1"), stages=("blocks.*",),
        post=("conv_head", "bn2"), final_layer="bn2", fine_layer="blocks.5",
        randomisation=(("classifier",), ("conv_head", "bn2"), ("blocks.6",)),
    )
    monkeypatch.setitem(ARCH_SPECS, spec.name, spec)
    model, info = create_model(spec.name, 3)
    assert info.architecture == spec.name and default_cam_layer(spec.name, "hirescam") == "blocks.5"
    assert "stride 16 (blocks.5)" in gradcam_layer_choices(spec.name)
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        h = x
        for _, mod in feature_steps(model, spec.name):
            h = mod(h)
        assert torch.allclose(h, model.forward_features(x))
        trunk, tail = split_model(model.eval(), spec.name, 4)
        assert torch.allclose(tail(trunk(x)), model(x), atol=1e-5)
    cam = Explainer(model, spec.name, "multiclass", InputSpec(size=64)).explain(np.full((64, 64), 128, np.uint8))
    assert cam.cam.shape == (64, 64)
    # The anomaly detectors' feature taps are the stages model_stages gives (FeatureBackbone, feature_recon).
    stem, stages, post = model_stages(model, spec.name)
    assert len(stem) == 2 and len(stages) == 7 and len(post) == 2
