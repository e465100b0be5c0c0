"""Split id lists: plain text shipped with segbench (one file name or number per line) and the official `split.mat`."""
from __future__ import annotations

from pathlib import Path

from ..base import DatasetError

#: text split lists shipped with the package (package_data `data/adapters/splits/*.txt`)
SPLIT_DIR = Path(__file__).parent / "splits"


def frame_name(entry: str, digits: int, suffix: str = ".png") -> str:
    """'22', '00022' or '00022.png' -> '00022.png' (lists in the wild use all three)."""
    entry = entry.strip()
    stem = entry[: -len(suffix)] if entry.endswith(suffix) else entry
    if stem.isdigit():
        stem = f"{int(stem):0{digits}d}"
    return stem + suffix


def read_split_list(path: Path, digits: int) -> list[str]:
    if not path.is_file():
        raise DatasetError(
            f"split list {path} not found. It ships with segbench (segbench/data/adapters/splits/); if your installation lacks it, "
            f"copy the list (one file name per line) to exactly that path, or reinstall segbench with its package data"
        )
    return [frame_name(line, digits) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def read_first_split_list(candidates: list[Path], digits: int) -> list[str]:
    """The first list that exists among `candidates`; the error names every place looked at."""
    for path in candidates:
        if path.is_file():
            return read_split_list(path, digits)
    places = "\n  ".join(str(p) for p in candidates)
    raise DatasetError(
        f"split list not found; looked at:\n  {places}\nPut the list (one file name per line) at one of these paths"
    )


def read_split_mat(path: Path, key: str, digits: int) -> list[str]:
    """One id array of the official GTA5 `split.mat` (keys trainIds, valIds, testIds; 1-based frame numbers)."""
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: the official GTA5 splits come in split.mat from the dataset's read_mapping archive "
            f"(https://download.visinf.tu-darmstadt.de/data/from_games/); put split.mat there, or use the RobustNet splits "
            f"train/val/test shipped with segbench"
        )
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f"reading {path} needs scipy: pip install scipy") from None
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise DatasetError(f"cannot read {path}: {e}; re-extract split.mat from the read_mapping archive") from None
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path} has no {key!r} array (found: {found}); expected the official GTA5 split.mat")
    return [frame_name(str(int(i)), digits) for i in mat[key].ravel()]
