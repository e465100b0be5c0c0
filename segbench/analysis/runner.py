"""The analyses as functions: `analyze_shift` and `analyze_divergence` over finished cells, `run_analyses` for the
matrix runner. Each writes a CSV, a markdown table and a PNG and returns their paths.

A checkpoint is a finished cell directory (`results/STUDY/cells/NAME/`) or its `model_final.pt`; the model is rebuilt
from the `record.json` beside it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from ..cells import CELLS
from ..io import write_text
from ..labels import CLASS_NAMES
from ..network import resolve
from ..record import read_record
from ..spec import prepared_parts
from .appearance import TRANSFORMS, ImageTransform, parse_transform_spec, style_statistics
from .loading import load_models

ANALYSES = ("shift", "divergence")
DEFAULT_CONTENT_CLASS = "car"
DEFAULT_STYLE_IMAGES = 50


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def default_out_dir(checkpoints: Sequence[str | Path]) -> Path:
    """Next to the study's table (`results/STUDY/`) when every checkpoint belongs to the same study, else ./analysis/."""
    studies = set()
    for c in checkpoints:
        cell = Path(c) if Path(c).is_dir() else Path(c).parent
        studies.add(cell.parent.parent if cell.parent.name == CELLS else None)
    return studies.pop() if len(studies) == 1 and None not in studies else Path("analysis")


def default_style_source(dataset: str) -> str:
    """The other embedded domain: the style a shift test borrows when none is named."""
    return "sim" if prepared_parts(dataset)[0] == "photo" else "photo"


def _device(name) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _class_id(name: str | int) -> int:
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    key = str(name).replace("_", " ")
    if key not in CLASS_NAMES:
        raise ValueError(f"unknown class {name!r}; valid: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(key)


def analyze_shift(checkpoints, *, dataset: str, split: str = "val", out_dir: Path | None = None, data_root=None,
                  device="cpu", transforms: Sequence[str] = tuple(TRANSFORMS), style_from: str | None = None,
                  max_images: int | None = None, size=None, seed: int = 0, batch_size: int = 1,
                  style_images: int = DEFAULT_STYLE_IMAGES) -> list[Path]:
    """Write shift_DATASET_SPLIT.{csv,md,png}; returns their paths."""
    from ..data import build_dataset
    from .appearance import conditions
    from .plots import plot_shift
    from .shift import run_shift, shift_csv, shift_markdown

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoints)
    device = _device(device)
    models = load_models(checkpoints, device)
    base = build_dataset(dataset, split, root=data_root)
    style = None
    if "style" in transforms:
        style_from = style_from or default_style_source(dataset)
        style = style_statistics(build_dataset(style_from, "val" if "val" in _splits(style_from) else "train",
                                               root=data_root), style_images, desc=f"style stats {style_from}")
        style = type(style)(style.mean, style.std, style_from)
    rows = run_shift(models, base, dataset=dataset, split=split, conditions=conditions(transforms), style=style,
                     size=size, max_images=max_images, seed=seed, device=device, batch_size=batch_size)
    stem = out_dir / f"shift_{_safe(dataset)}_{_safe(split)}"
    note = f"\nstyle = Reinhard Lab colour transfer towards {style.source} ({style_images} images)\n" if style else ""
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_text(paths[0], shift_csv(rows))
    write_text(paths[1], shift_markdown(rows) + note)
    plot_shift(rows, paths[2])
    return paths


def _splits(name: str) -> Sequence[str]:
    from ..data import DATASETS

    try:
        return DATASETS.get(prepared_parts(name)[0]).splits
    except Exception:
        return ("val",)


def analyze_divergence(checkpoints, *, domains: Sequence[str], split: str = "val", out_dir: Path | None = None,
                       data_root=None, device="cpu", appearance: str | None = "style",
                       content_class: str | int | None = DEFAULT_CONTENT_CLASS, max_images: int | None = None,
                       size=None, seed: int = 0, batch_size: int = 4,
                       style_images: int = DEFAULT_STYLE_IMAGES) -> list[Path]:
    """Write divergence_A[_B].{csv,md,png}; returns their paths."""
    from ..data import build_dataset
    from .divergence import divergence_csv, divergence_markdown, measure
    from .plots import plot_divergence

    if not 1 <= len(domains) <= 2:
        raise ValueError(f"--domains takes A or A,B, got {','.join(domains)}")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoints)
    dev = _device(device)
    models = load_models(checkpoints, dev)
    base_a = build_dataset(domains[0], split, root=data_root)
    base_b = build_dataset(domains[1], split, root=data_root) if len(domains) == 2 else None
    transform = None
    if appearance:
        name, level = parse_transform_spec(appearance)
        level = TRANSFORMS[name].levels[-1] if level is None else level
        style = None
        if name == "style":
            source = domains[1] if len(domains) == 2 else default_style_source(domains[0])
            style = style_statistics(build_dataset(source, split, root=data_root), style_images,
                                     desc=f"style stats {source}")
            style = type(style)(style.mean, style.std, source)
        transform = ImageTransform(name, level, seed=seed, style=style)
    cls = None if content_class is None else _class_id(content_class)
    rows = []
    for m in models:
        rows += measure(m.model, base_a, base_b=base_b, appearance=transform, content_class=cls,
                        max_images=max_images, size=size, seed=seed, device=dev, batch_size=batch_size,
                        label=m.label, names=(domains[0], domains[1] if len(domains) == 2 else ""))
    stem = out_dir / ("divergence_" + "_".join(_safe(d) for d in domains))
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_text(paths[0], divergence_csv(rows))
    write_text(paths[1], divergence_markdown(rows))
    plot_divergence(rows, paths[2])
    return paths


def run_analyses(kinds: Sequence[str], cell_dirs: Sequence[Path], out_dir: Path, data_root=None, device="cpu",
                 *, max_images: int | None = None, **options) -> list[Path]:
    """For the matrix runner: the requested analyses ('shift', 'divergence') over finished cells, files in `out_dir`.

    Cells are grouped by their training source. shift runs on the source's val split; divergence compares the source
    with the first other dataset the cells were evaluated on (or the source alone when there is none).
    """
    unknown = set(kinds) - set(ANALYSES)
    if unknown:
        raise ValueError(f"unknown analysis {sorted(unknown)}; valid: {', '.join(ANALYSES)}")
    by_source: dict[str, list[Path]] = {}
    targets: dict[str, list[str]] = {}
    for cell in cell_dirs:
        record = read_record(resolve(cell)[1])
        by_source.setdefault(record["source"], []).append(Path(cell))
        for t in record.get("results", {}):
            if t != record["source"] and t not in targets.setdefault(record["source"], []):
                targets[record["source"]].append(t)
    written: list[Path] = []
    for source, cells in by_source.items():
        if "shift" in kinds:
            written += analyze_shift(cells, dataset=source, out_dir=out_dir, data_root=data_root, device=device,
                                     max_images=max_images, **options.get("shift", {}))
        if "divergence" in kinds:
            domains = [source] + targets.get(source, [])[:1]
            written += analyze_divergence(cells, domains=domains, out_dir=out_dir, data_root=data_root, device=device,
                                          max_images=max_images, **options.get("divergence", {}))
    return written

