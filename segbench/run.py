"""`python -m segbench.run [SPEC ...]`: plan a study, run its missing cells, print and write the tables.

With no spec and no --config it runs the embedded default (experiments/embedded.yaml): two generated domains,
ResNet-18 vs IBN-a vs IBN-b, on a CPU in minutes.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from .cells import DONE, scored_datasets
from .config import DEFAULTS, EMBEDDED_DEFAULT, ConfigError, apply_overrides, experiment_path, load_config
from .errors import command
from .record import is_done
from .spec import GRAMMAR, SpecError, parse_specs, source_parts
from .validation import validate_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segbench.run", formatter_class=argparse.RawDescriptionHelpFormatter,
        # whole option names only: study.cell_argv strips parent-only options by name, and an abbreviation it missed
        # (--launcher-op jobs=2) would have every worker launch workers of its own
        allow_abbrev=False,
        description="Train on each source, test on every target, write the generalization table.",
        epilog=f"spec grammar:\n{GRAMMAR}\n\nexamples:\n  python -m segbench.run                       # embedded default\n"
               "  python -m segbench.run 'gta5->cityscapes'\n  python -m segbench.run gta5:cityscapes,bdd100k "
               "--backbones 'resnet50*' --seeds 3",
    )
    p.add_argument("specs", nargs="*", help="study specs; none = the experiment file's (default: embedded)")
    p.add_argument("--config", type=Path,
                   help="experiment YAML file (default: experiments/embedded.yaml when no spec is given; with specs, "
                        "its model/train/eval recipe when every dataset of them is an embedded one (sim, photo), "
                        "else segbench's defaults, the real-data recipe); the first line a study prints names it")
    p.add_argument("--backbones", nargs="+", help="backbone names or globs, e.g. 'resnet50*'")
    p.add_argument("--heads", nargs="+", help="head names or globs")
    p.add_argument("--methods", nargs="+", help="domain-generalization methods or globs (segbench methods lists "
                                                 "them), e.g. --methods erm isw mixstyle; options: --set "
                                                 "method.isw.weight=0.6")
    p.add_argument("--seeds", type=int, help="run seeds 0..N-1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.iters=2000 (repeatable)")
    p.add_argument("--data-root", help="directory holding the datasets (default: $SEGBENCH_DATA or ./datasets)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: ./results)")
    p.add_argument("--name", help="study name: results go to RESULTS/NAME")
    p.add_argument("--launcher", default="local", help="how cells run: local, gpus, torchrun, slurm (default: local)")
    p.add_argument("--launcher-opt", dest="launcher_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="launcher option, repeatable: jobs=2 (local: cells at once, threads split); gpus=0,1 per_cell=2 "
                        "(gpus); nproc=4 (torchrun); "
                        "partition=gpu gpus_per_cell=4 timeout_min=1440 wait=false (slurm)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): cuda when a GPU is visible, else cpu")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells, ids, done or not) and which datasets are missing, then exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (the YAML that would run: experiment file, --set, the "
                        "options above) and exit; save it and pass it back with --config to run exactly that")
    p.add_argument("--analyze", default="", metavar="KINDS",
                   help="after the report, comma list of shift,divergence on the first seed's finished cells "
                        "(tables and plots next to table.md)")
    p.add_argument("--analyze-images", type=int, default=None, metavar="N", help="first N images per split for --analyze")
    p.add_argument("--only", nargs="+", metavar="CELL_ID", help="run only these cells of the plan (used by launchers)")
    return p


def study_name(specs: list[str]) -> str:
    text = "_".join(specs).replace("<->", "-and-").replace("->", "-to-").replace(":", "-to-")
    return re.sub(r"[^A-Za-z0-9_.,+-]", "_", text)


#: the sections of an experiment file that say how each cell trains and is scored, as opposed to which cells there
#: are (specs, backbones, heads, seeds, methods): what a spec of embedded domains takes from experiments/embedded.yaml
RECIPE_SECTIONS = ("model", "train", "eval")


def embedded_datasets(specs: list[str]) -> list[str]:
    """The datasets of `specs` when every one is generated by segbench itself (`generated`: the embedded domains),
    else none."""
    from .data import DATASETS

    try:
        transfers = parse_specs(specs)
    except SpecError:
        return []  # validation names the problem
    names = list(dict.fromkeys(n for t in transfers for n in (*source_parts(t.source), *t.targets)))
    return names if all(n in DATASETS and DATASETS.get(n).generated for n in names) else []


def base_config(args) -> tuple[dict, str]:
    """The configuration the command line starts from, and the line that names it (`settings: ...`): --config's
    file; the embedded default without specs; for specs of embedded domains only, the recipe of embedded.yaml (its
    768x768 crops would be padding on 96x192 images); else segbench's defaults, the real-data recipe."""
    if args.config is not None:
        path = experiment_path(args.config)
        return load_config(path), f"settings: {path}"
    if not args.specs:
        path = experiment_path(EMBEDDED_DEFAULT)
        return load_config(path), f"settings: {path} (no spec given: the embedded default)"
    embedded = embedded_datasets(args.specs)
    if embedded:
        path = experiment_path(EMBEDDED_DEFAULT)
        recipe = load_config(path)
        cfg = load_config(None)
        cfg.update({section: recipe[section] for section in RECIPE_SECTIONS})
        return cfg, (f"settings: the {'/'.join(RECIPE_SECTIONS)} recipe of {path}, as every dataset of the specs is "
                     f"embedded ({', '.join(embedded)}); --config FILE picks another")
    train, model = DEFAULTS["train"], DEFAULTS["model"]
    return load_config(None), (
        f"settings: segbench's defaults, the real-data recipe (train.crop={train['crop']}, "
        f"train.batch_size={train['batch_size']}, train.workers={train['workers']}, "
        f"model.pretrained={model['pretrained']}); --config FILE picks another (experiments/embedded.yaml: small "
        "images on a CPU)")


def resolve_config(args, base: tuple[dict, str] | None = None) -> dict:
    """The study's configuration: `base_config` (or `base`, already loaded), --set, then the options."""
    cfg = (base or base_config(args))[0]
    cfg = apply_overrides(cfg, args.overrides)
    if args.specs:
        cfg["specs"] = list(args.specs)
    if args.backbones:
        cfg["backbones"] = args.backbones
    if args.heads:
        cfg["heads"] = args.heads
    if args.methods:
        cfg["methods"] = [m.strip() for arg in args.methods for m in arg.split(",") if m.strip()]
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
        cfg["seeds"] = list(range(args.seeds))
    if args.name:
        cfg["name"] = args.name
    if not cfg["specs"]:
        raise ConfigError("no spec given and the experiment file has none; e.g. python -m segbench.run 'gta5->cityscapes'")
    cfg = validate_study(cfg, args.data_root)
    if not cfg["name"] or (args.specs and args.config is None and not args.name):
        cfg["name"] = study_name(cfg["specs"])
    return cfg


def config_yaml(cfg: dict, argv: list[str]) -> str:
    """The resolved configuration as an experiment file: `--config` on it plans the same cells."""
    import json

    import yaml

    plain = json.loads(json.dumps(cfg))  # tuples as lists: what a YAML file holds
    header = (f"# the configuration `python -m segbench.run {shlex.join(argv)}` resolves to;\n"
              "# python -m segbench.run --config THIS_FILE runs exactly it\n")
    return header + yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=120)


def study_methods(cfg: dict) -> dict[str, dict]:
    """Each method of the study (globs expanded, in order) -> its effective options."""
    from .methods import METHODS, method_options

    return {name: method_options(name, cfg["method"].get(name)) for name in METHODS.expand(cfg["methods"])}


def method_revisions(methods: dict[str, dict]) -> dict[str, int]:
    """Each method's Method.revision (cells.plan puts it into the ids of the methods above 1)."""
    from .methods import METHODS

    return {name: METHODS.get(name).revision for name in methods}


def study_cells(cfg: dict, transfers=None, backbones=None) -> list:
    """The study's cells in run order (cells.plan over its specs, backbones, heads and methods); `transfers` and
    `backbones` when the caller has them already."""
    from .cells import plan
    from .models import BACKBONES, HEADS

    methods = study_methods(cfg)
    return plan(cfg, parse_specs(cfg["specs"]) if transfers is None else transfers,
                BACKBONES.expand(cfg["backbones"]) if backbones is None else backbones,
                HEADS.expand(cfg["heads"]), methods, method_revisions(methods))


def parse_analyses(text: str) -> list[str]:
    from .analysis import ANALYSES

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ANALYSES]
    if unknown:
        raise ConfigError(f"--analyze {text!r}: unknown {', '.join(unknown)}; choose from {', '.join(ANALYSES)}")
    return kinds


def check_datasets(transfers, cfg: dict, data_root) -> dict[str, object]:
    """Open every split the study needs before training anything, so a missing target, or one with files that lack
    their partner (`eval.missing_pairs`), fails in seconds, and check that each training split holds the global
    batch. Returns each source's training split, opened."""
    from .data import build_dataset
    from .engine.scoring import check_missing_pairs

    needed, scored, training = [], set(), set()
    for t in transfers:
        needed.append((t.source, cfg["train"]["split"]))
        training.add((t.source, cfg["train"]["split"]))
        targets = [(name, cfg["eval"]["split"]) for name in scored_datasets(t.source, t.targets, cfg["eval"], views=False)]
        needed += targets
        scored.update(targets)
    opened = {}
    for name, split in dict.fromkeys(needed):
        opened[(name, split)] = dataset = build_dataset(name, split, root=data_root)
        if (name, split) in scored:
            check_missing_pairs(dataset, cfg["eval"]["missing_pairs"])
        if (name, split) in training:
            check_batch_fits(cfg["train"]["batch_size"], len(dataset), name, split)
    return {t.source: opened[(t.source, cfg["train"]["split"])] for t in transfers}


def check_batch_fits(batch: int, images: int, source: str, split: str) -> None:
    """A global batch larger than the training split is never intended: every step would draw images more than once,
    and a typo (100000 for 100) asks for memory no machine has, ending in an OOM kill without a message."""
    if batch > images:
        raise ConfigError(f"train.batch_size={batch}: the global batch is larger than {source}'s {split} split "
                          f"({images} images), so every step would draw images more than once; set "
                          f"train.batch_size to at most {images} (e.g. --set train.batch_size={images})")


#: how many images of a training split `crop_warnings` reads the size of (headers only), evenly spread
SIZE_SAMPLE = 16


def crop_warnings(cfg: dict, sources: dict[str, object]) -> list[str]:
    """One line per source whose training images are all smaller than `train.crop`, even at the largest scale of
    `train.scale_range` (of SIZE_SAMPLE images read): each crop is then mostly padding, as 768 x 768 crops of the
    embedded 96 x 192 frames were."""
    from .data.readers import image_size

    crop_h, crop_w = cfg["train"]["crop"]
    top = max(cfg["train"]["scale_range"])
    out = []
    for source, dataset in sources.items():
        for name, part in zip(source_parts(source), getattr(dataset, "parts", None) or [dataset]):
            pairs = part.pairs
            picked = sorted({i * len(pairs) // SIZE_SAMPLE for i in range(SIZE_SAMPLE)}) if pairs else []
            sizes = [image_size(Path(pairs[i][0]))[::-1] for i in picked]  # (h, w)
            if sizes and all(crop_h > h * top or crop_w > w * top for h, w in sizes):
                h, w = min(h for h, _ in sizes), min(w for _, w in sizes)
                out.append(f"warning: train.crop=[{crop_h}, {crop_w}] is larger than every training image of "
                           f"{name} read ({len(sizes)} of {len(pairs)}, the smallest {h}x{w}, scaled "
                           f"x{top} at most by train.scale_range): most of each crop is padding; e.g. --set "
                           f"'train.crop=[{h},{w}]'")
    return out


def loader_warnings(cfg: dict) -> list[str]:
    """One line per loader asking for more worker processes than this process may use CPU cores (its affinity)."""
    from .launchers import usable_cores

    cores = usable_cores()
    return [f"warning: {section}.workers={cfg[section]['workers']} loader processes on {cores} usable CPU core(s) "
            f"compete with the model for them; --set {section}.workers={cores - 1}" + (" or 0" if cores > 1 else "")
            + " (0: read in the main process, best for small images)"
            for section in ("train", "eval") if cfg[section]["workers"] > cores]


def dataset_line(transfers, data_root) -> str:
    """Which datasets of the study are on disk under the data root, which are generated on first use, and which are
    missing (the study would stop on them): the dry run's look, no file opened."""
    from .data.factory import MISSING, dataset_directory, dataset_presence
    from .data.registry import data_root as root_of, data_root_origin

    names = list(dict.fromkeys(n for t in transfers for n in (*source_parts(t.source), *t.targets)))
    by_status: dict[str, list[str]] = {}
    for name in names:
        status = dataset_presence(name, data_root)
        by_status.setdefault(status, []).append(
            f"{name} (expected at {dataset_directory(name, data_root)})" if status == MISSING else name)
    parts = [f"{status}: {', '.join(found)}" for status, found in by_status.items() if status != MISSING]
    if MISSING in by_status:
        parts.append(f"MISSING: {', '.join(by_status[MISSING])}; the study stops on these until they are there "
                     "(datasets/README.md says how to get them)")
    return f"datasets under {root_of(data_root).resolve()} (from {data_root_origin(data_root)}): " + "; ".join(parts)


def check_pretrained(cfg: dict, backbones: list[str]) -> None:
    """Fetch (or find) every backbone's pretrained weights once, before training, so an offline machine fails in
    seconds with the URL and cache path instead of once per cell; a local file is read once (safely) for the same
    reason."""
    import os

    from .models.pretrained import PretrainedWeightsError, official_file, read_weights_file

    pretrained = cfg["model"].get("pretrained")
    if pretrained is None or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    if pretrained not in ("imagenet", "torchvision"):
        if not os.path.isfile(pretrained):
            raise PretrainedWeightsError(f"model.pretrained={pretrained!r}: no such file; give 'imagenet', "
                                         "'torchvision', a path to a state dict, or null to train from scratch")
        read_weights_file(Path(pretrained))  # a file that is no state dict fails here, once, not in every cell
        return
    for name in backbones:
        official_file(name, pretrained)


def plan_summary(cells, results_dir: Path) -> str:
    """How many cells the plan holds, how many are done (skipped) and how many will run."""
    done = sum(is_done(cell, cell.directory(results_dir)) for cell in cells)
    return f"{len(cells)} cells -> {results_dir}: {done} done, {len(cells) - done} to run"


def print_plan(cells, results_dir: Path, argv: list[str], datasets: str = "") -> None:
    """The plan: each cell with its id, state, directory, targets and the hash of its protocol card's training part
    (the targets' part needs their data), then each distinct card once."""
    from .protocol_card import protocol_card
    from .report.protocols import card_hash
    from .study import worker_args

    print(f"{len(cells)} cells -> {results_dir}")
    cards = {}
    for cell in cells:
        done = is_done(cell, cell.directory(results_dir))
        card = protocol_card(cell, {})
        cards.setdefault(card_hash(card), card)
        print(f"  {cell.cell_id}  {'done   ' if done else 'pending'}  {cell.dirname}  "
              f"targets={','.join(cell.eval_targets)}  card={card_hash(card)}")
    for digest, card in cards.items():
        print(f"card {digest} (training; each target's geometry is added when it is scored): "
              f"{json.dumps({k: v for k, v in card.items() if k != 'targets'}, sort_keys=True, default=str)}")
    if datasets:
        print(datasets)
    print("each cell runs:", shlex.join(["python", *worker_args(argv, "CELL_ID")]))


def say(line: str) -> None:
    """A line about the study as it starts, on stderr with the progress lines (stdout keeps the plan and tables)."""
    print(line, file=sys.stderr, flush=True)


@command("segbench run")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    base = base_config(args)
    cfg = resolve_config(args, base)
    if args.print_config:
        print(config_yaml(cfg, [a for a in argv if a != "--print-config"]), end="")
        return 0
    transfers = parse_specs(cfg["specs"])
    analyses = parse_analyses(args.analyze)
    say(base[1] + (f", then {len(args.overrides)} --set" if args.overrides else ""))
    for line in loader_warnings(cfg):
        say(line)

    from . import distributed as dist_utils
    from .launchers import LAUNCHERS, parse_options
    from .models import BACKBONES
    from .report import build_report

    backbones = BACKBONES.expand(cfg["backbones"])
    launcher = LAUNCHERS.get(args.launcher)
    try:
        launcher_opts = parse_options(args.launcher_opts, launcher)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cells = study_cells(cfg, transfers, backbones)
    if args.only:
        unknown = set(args.only) - {c.cell_id for c in cells}
        if unknown:
            raise ConfigError(f"--only {' '.join(sorted(unknown))}: no such cell in this plan (see --dry-run)")
        cells = [c for c in cells if c.cell_id in args.only]
    results_dir = args.results / cfg["name"]
    if args.dry_run:
        print_plan(cells, results_dir, argv, dataset_line(transfers, args.data_root))
        return 0
    say(plan_summary(cells, results_dir))
    for line in crop_warnings(cfg, check_datasets(transfers, cfg, args.data_root)):
        say(line)
    check_pretrained(cfg, backbones)
    # subprocess launchers (local with jobs=N>1 too) must not open a CUDA context on GPU 0 in the parent
    in_process = args.launcher == "local" and launcher_opts.get("jobs_at_once", 1) == 1
    device = dist_utils.init_from_env(None if args.device == "auto" else args.device) if in_process else None
    from .study import run_study

    try:
        outcomes = run_study(cells, results_dir, launcher, launcher_opts, argv=argv, data_root=args.data_root,
                             device=device)
    except (ValueError, ImportError) as e:  # no GPU visible, submitit missing
        raise ConfigError(f"--launcher {args.launcher}: {e}") from None
    main_rank = dist_utils.is_main()
    dist_utils.leave()  # on every rank: the cells were the last collective work
    if not main_rank:
        return 0
    md = build_report(results_dir)
    print()
    print(md)
    if analyses:
        from .analysis import run_analyses

        first_seed = min(c.seed for c in cells)
        cell_dirs = [c.directory(results_dir) for c in cells if c.seed == first_seed]
        finished = [d for d in cell_dirs if (d / DONE).exists()]
        for path in run_analyses(analyses, finished, results_dir, data_root=args.data_root, device=device or "cpu",
                                 max_images=args.analyze_images):
            print(f"analysis: {path}")
    print(f"tables: {results_dir / 'table.md'}, {results_dir / 'table.csv'}; records: {results_dir / 'cells'}")
    submitted = [o for o in outcomes if o.status == "submitted"]
    if submitted:
        print(f"{len(submitted)} cell(s) submitted; `segbench report {results_dir}` shows progress as they finish")
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = sum(o.status == "skipped" for o in outcomes)
    if skipped:
        print(f"{skipped} finished cell(s) skipped (delete their directory to rerun them)")
    busy = [o for o in outcomes if o.status == "busy"]
    if busy:
        print(f"{len(busy)} cell(s) busy elsewhere, not run here (rerun this command once they finish):")
        for o in busy:
            print(f"  {o.cell.dirname}: {o.reason}")
    if failed:
        print(f"\n{len(failed)} cell(s) FAILED:", file=sys.stderr)
        for o in failed:
            print(f"  {o.cell.dirname}: {o.error}\n    log: {o.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
