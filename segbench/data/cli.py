"""`segbench data list | check NAME | prepare NAME --size WxH`, each with --data-root.

Exit codes: 0 fine, 1 problems found (check) or pairs left out (prepare), 2 the dataset cannot be opened at all.
`check --split all` lists a split that is absent (no image directory: not downloaded) without counting it a problem.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..spec import prepared_copy
from .base import DatasetError, DatasetWarning
from .cache import MANIFEST, PREPARED_DIR, parse_size
from .check import check_dataset
from .factory import build_dataset, dataset_presence, dataset_splits, open_every_split, prepare_dataset
from .plugins import load_plugins
from .registry import DATASETS, data_root, data_root_origin

#: `data check --split all`: every split of the dataset
EVERY_SPLIT = "all"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segbench data", description="inspect or prepare datasets")
    sub = parser.add_subparsers(dest="command", required=True)
    # every command finds datasets (and the YAML dataset files) the same way
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-root", help="directory holding all datasets and their YAML files "
                                           "(default: $SEGBENCH_DATA or ./datasets)")

    def common(p):
        p.add_argument("name", help="registered dataset name (segbench data list); NAME@WxH for a prepared copy")
        p.add_argument("--root", help="the dataset's own directory (default: DATA_ROOT/<its directory>)")
        p.add_argument("--workers", type=int, default=0, help="reader processes (0: read in this process)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("list", parents=[where], help="the data root in use and where it came from; registered datasets, "
                                                 "their directories, whether each is there, and their splits")
    check = sub.add_parser(
        "check", parents=[where], help="read every pair as training does and report problems",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"exit codes: 0 every split checked is clean; 1 problems found, or a split present (its image "
               f"directory exists)\nthat cannot be opened; 2 the dataset cannot be opened at all. With --split "
               f"{EVERY_SPLIT}, a split whose image\ndirectory does not exist (not downloaded, e.g. BDD100K's train "
               f"beside its val) is listed as absent,\nnot a problem, as long as one split is present.")
    common(check)
    check.add_argument("--split", help=f"split to scan (default: the dataset's first split); `{EVERY_SPLIT}`: every "
                                       f"split (a dataset with its own `{EVERY_SPLIT}` split, the union of the others "
                                       "as in GTA5 and SYNTHIA: that one)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    prepare = sub.add_parser("prepare", parents=[where], help="write resized uint8 copies for faster training")
    common(prepare)
    prepare.add_argument("--size", required=True, metavar="WxH", help="target size in pixels, WxH, e.g. 1280x720")
    prepare.add_argument("--out", help="cache directory (default: DATA_ROOT/prepared/NAME@WxH)")
    prepare.add_argument("--png-compression", type=int, default=1, choices=range(10), metavar="0-9",
                         help="zlib level of cached images: 0 decodes ~4x faster, ~1.7x the disk (default 1)")
    return parser


def cmd_list(args) -> int:
    load_plugins(args.data_root)
    print(f"data root: {data_root(args.data_root).resolve()} (from {data_root_origin(args.data_root)})")
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        print(f"{name:<14} {getattr(cls, 'default_dir', ''):<18} {dataset_presence(name, args.data_root):<22} "
              f"splits: {', '.join(getattr(cls, 'splits', ()))}")
    prepared = sorted(p.parent.name for p in (data_root(args.data_root) / PREPARED_DIR).glob(f"{prepared_copy('*', '*')}/{MANIFEST}"))
    if prepared:
        print(f"prepared copies ({PREPARED_DIR}/): {', '.join(prepared)}")
    return 0


def cmd_check(args) -> int:
    every = args.split == EVERY_SPLIT and EVERY_SPLIT not in dataset_splits(args.name, args.data_root, args.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # the report lists what the warning would
        if every:
            datasets, unavailable, absent = open_every_split(args.name, args.data_root, path=args.root)
        else:
            split_only = build_dataset(args.name, args.split, args.data_root, path=args.root)
            datasets, unavailable, absent = {args.split: split_only}, {}, {}
    reports = [check_dataset(ds, name=args.name, workers=args.workers, progress=not args.quiet) for ds in datasets.values()]
    ok = all(r.ok for r in reports) and not unavailable
    if not every:
        print(json.dumps(reports[0].to_json(), indent=1) if args.json else reports[0].to_text())
    elif args.json:
        print(json.dumps({"dataset": args.name, "ok": ok, "splits": [r.to_json() for r in reports],
                          "unavailable": unavailable, "absent": absent}, indent=1))
    else:
        print("\n\n".join(r.to_text() for r in reports))
        for split, message in absent.items():
            print(f"\nsplit {split!r} absent (not downloaded?), not checked: {message}")
        for split, message in unavailable.items():
            print(f"\nPROBLEM: split {split!r} cannot be opened: {message}")
    return 0 if ok else 1


def cmd_prepare(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        out, left_out = prepare_dataset(
            args.name, parse_size(args.size), path=args.root, data_root_dir=args.data_root, out=args.out,
            workers=args.workers, progress=not args.quiet, png_compression=args.png_compression,
        )
    name = prepared_copy(args.name, args.size)
    print(f"prepared {name} in {out}; use it as dataset name {name}")
    if left_out:
        # `data check` scans one split: name the splits the left-out pairs belong to (GTA5's train/val/test lists
        # name frames a partial download lacks, which its `all` split, made of the files present, never sees)
        entries = json.loads((out / MANIFEST).read_text())["left_out"]
        splits = sorted({split for entry in entries for split in entry.get("splits", [])})
        how = f"`segbench data check {args.name}" + (f" --split SPLIT` explains (SPLIT: {', '.join(splits)})"
                                                      if splits else "` explains")
        print(f"{len(left_out)} pairs left out (listed in {out}/manifest.json); {how}", file=sys.stderr)
    return 1 if left_out else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "check":
            return cmd_check(args)
        return cmd_prepare(args)
    except (DatasetError, KeyError) as e:  # KeyError: an unknown dataset name, with the registered ones
        print(f"segbench data {args.command}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
