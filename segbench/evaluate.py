"""`segbench evaluate`: score a trained checkpoint, or a directory of prediction PNGs from any framework, with
segbench's metric (official Cityscapes semantics). Prints JSON with mIoU and per-class IoU.

Evaluation settings are the `eval:` section of an experiment (`segbench.config`), set with `--set eval.KEY=VALUE`
exactly as in `python -m segbench.run`. A checkpoint is scored under the settings its cell was scored under by the
runner, unless `--set` says otherwise; prediction directories use the defaults.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from .config import DEFAULTS, ConfigError, apply_overrides, validate
from .errors import command
from .io import write_json
from .labels import scored_classes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segbench evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  segbench evaluate results/NAME/cells/CELL --dataset cityscapes --set eval.mode=slide "
               "--set 'eval.window=[512,1024]' --set eval.flip=true\n"
               "  segbench evaluate --preds my_predictions/ --dataset cityscapes --encoding cityscapes")
    p.add_argument("checkpoint", nargs="?", type=Path, help="cell directory, model_final.pt or checkpoints/iter_*.pt")
    p.add_argument("--preds", type=Path,
                   help="score this directory of prediction PNGs instead of a checkpoint: exactly one per image, "
                        "named after it (STEM.png or STEM_pred.png, any sub-directory); grey PNGs whose value, or "
                        "palette PNGs whose index, is the class")
    p.add_argument("--encoding", choices=["trainid", "cityscapes"], default="trainid",
                   help="how --preds PNGs encode classes: trainIds 0..18, or Cityscapes label ids 0..33; 255 = "
                        "ignore; any other value is refused")
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. cityscapes")
    p.add_argument("--data-root")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help=f"evaluation setting (repeatable); keys: {', '.join(DEFAULTS['eval'])}. "
                        "Sizes are [H, W] lists, e.g. --set 'eval.size=[512,1024]'")
    p.add_argument("--save-preds", type=Path, help="write every prediction here as a trainId PNG")
    p.add_argument("--overlay", action="store_true", help="with --save-preds: also palette overlays")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): cuda when a GPU is visible, else cpu")
    p.add_argument("--output", type=Path, help="also write the JSON here")
    return p


def only_eval_overrides(overrides: list[str], command: str) -> None:
    """A command that takes `--set eval.*` only (`segbench evaluate`, `segbench predict`) refuses any other key before
    any work, naming the keys it takes."""
    bad = [o for o in overrides if not o.startswith("eval.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: {command} takes eval.* settings only ({', '.join(DEFAULTS['eval'])})")


def eval_section(overrides: list[str], recorded: dict | None = None) -> dict:
    """The eval section, validated: defaults, then what the cell was scored under (if any), then `--set eval.*`."""
    ecfg = copy.deepcopy(DEFAULTS["eval"])
    ecfg.update({k: v for k, v in (recorded or {}).items() if k in ecfg})
    return validate(apply_overrides({"eval": ecfg}, overrides), sections=("eval",))["eval"]


def check_outputs(output: Path | None, save_preds: Path | None) -> None:
    """Where --output and --save-preds write, checked before the scoring, not after it."""
    from .io import check_writable

    if output is not None:
        if output.is_dir():
            raise ConfigError(f"--output {output}: a directory; give the path of the JSON file to write, e.g. "
                              f"{output / 'result.json'}")
        check_writable(output.parent)
    if save_preds is not None:
        check_writable(save_preds)


def check_preds_protocol(dataset, protocol: str) -> None:
    """--preds are scored against the label as stored: refuse a protocol that resizes or crops this target's label
    (`robustnet` and `rein` on Mapillary), which the result would otherwise record without having applied it."""
    from .data.eval_protocols import ImageResize, ReinRescale, geometry_for

    if not isinstance(geometry_for(dataset, protocol), (ImageResize, ReinRescale)):  # these leave the label alone
        raise ConfigError(f"--preds with eval.protocol={protocol!r}: that protocol resizes or crops the "
                          f"{getattr(dataset, 'dataset_name', 'target')} label, and --preds scores each prediction "
                          "against the label at its native resolution; drop --set eval.protocol (predictions at "
                          "label resolution), or score the checkpoint under that protocol instead")


@command("segbench evaluate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import build_dataset

    if (args.checkpoint is None) == (args.preds is None):
        print("segbench evaluate: give either a CHECKPOINT or --preds DIR", file=sys.stderr)
        return 2
    check_outputs(args.output, args.save_preds)
    only_eval_overrides(args.overrides, "segbench evaluate")
    if args.preds is not None:
        from .engine.scoring import score_prediction_dir

        ecfg = eval_section(args.overrides)
        dataset = build_dataset(args.dataset, ecfg["split"], root=args.data_root)
        # predictions are scored at the label's native resolution: eval.classes applies, eval.protocol only where it
        # leaves the label alone
        check_preds_protocol(dataset, ecfg["protocol"])
        result = score_prediction_dir(dataset, args.preds, args.encoding,
                                      scored_classes(getattr(dataset, "eval_classes", None), ecfg["classes"]),
                                      ecfg["missing_pairs"])
        result["source"] = {"preds": str(args.preds), "encoding": args.encoding}
    else:
        from .network import load_trained_model
        from .distributed import init_from_env
        from .data.base import missing_pairs
        from .engine.scoring import evaluate, prepare_for_scoring, scoring_options

        device = init_from_env(None if args.device == "auto" else args.device)
        model, record = load_trained_model(args.checkpoint)
        ecfg = eval_section(args.overrides, record["config"].get("eval"))
        dataset = build_dataset(args.dataset, ecfg["split"], root=args.data_root)
        classes = prepare_for_scoring(dataset, ecfg)
        result = evaluate(model, dataset, device=device, eval_classes=classes, **scoring_options(ecfg),
                          save_dir=args.save_preds, overlay=args.overlay, desc=f"evaluate on {args.dataset}")
        result["source"] = {"checkpoint": str(args.checkpoint), "cell_id": record.get("cell_id"),
                            **{k: record.get(k) for k in ("backbone", "head", "source", "seed")}}
        if missing_pairs(dataset):  # allowed by eval.missing_pairs=skip
            result["missing_pairs"] = len(missing_pairs(dataset))
    result.update(dataset=args.dataset, split=ecfg["split"], eval=ecfg)
    result.setdefault("images", len(dataset))  # --preds counts the pairs it scored
    if args.output:
        write_json(args.output, result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
