"""A study checked before any work (`--dry-run` too), every problem in one message: config.py's rules, then what needs
the registries, which config.py (a leaf) does not import: the datasets the specs name and their splits, which parts
`train.source_weights` names, a source scored in-domain on its training images, the backbones and heads and their
output strides, the methods and their options, and where each method can place its modules in each network.
"""
from __future__ import annotations

from .cells import scored_datasets
from .config import ConfigError, config_problems, problems_message
from .spec import SpecError, is_prepared, parse_specs, prepared_parts, source_parts


def validate_study(cfg: dict, data_root) -> dict:
    """Every setting checked before any work (--dry-run too): config.py's rules, then what needs the registries
    (datasets and their splits, backbones, heads and their output strides); every problem in one ConfigError."""
    cfg, problems = config_problems(cfg)
    problems += dataset_problems(cfg, data_root) + model_problems(cfg) + method_problems(cfg)
    if not problems:
        problems += placement_problems(cfg)
    if problems:
        raise ConfigError(problems_message(problems))
    return cfg


def _names(values) -> list[str]:
    """The names of a list setting that passed its check; none when it did not (its problem is already listed)."""
    return values if isinstance(values, list) and all(isinstance(v, str) for v in values) else []


def dataset_problems(cfg: dict, data_root) -> list[str]:
    """Datasets the specs name that are not registered (plug-ins of the data root included), and splits they lack.
    Nothing is opened: that is check_datasets' job, after the plan."""
    from .data import DATASETS, DatasetError, load_plugins
    from .data.plugins import unknown_name_hint
    from .data.cache import parse_size
    from .source_weights import source_weight_problems

    try:
        transfers = parse_specs(_names(cfg["specs"]))
    except SpecError as e:
        return [f"specs: {e}"]
    try:
        load_plugins(data_root)
    except DatasetError as e:  # a broken YAML dataset: named with the rest, its datasets not checked further
        return [str(e)]
    uses: dict[str, dict[str, object]] = {}  # dataset -> {setting: split}
    for t in transfers:
        for part in source_parts(t.source):  # a multi-source spec trains on, and scores, each of its parts
            uses.setdefault(part, {})["train.split"] = cfg["train"]["split"]
        for name in scored_datasets(t.source, t.targets, cfg["eval"], views=False):
            uses.setdefault(name, {})["eval.split"] = cfg["eval"]["split"]
    problems = source_weight_problems(cfg["train"].get("source_weights"), [t.source for t in transfers])
    for name, splits in uses.items():
        if is_prepared(name):  # a prepared copy: its splits are in its manifest, read when check_datasets opens it
            try:
                parse_size(prepared_parts(name)[1])
            except DatasetError as e:
                problems.append(f"specs: {name!r}: {e}")
            continue
        if name not in DATASETS:
            problems.append(f"specs: unknown dataset {name!r}; valid names: {', '.join(DATASETS.names())}"
                            + unknown_name_hint(name, data_root))
            continue
        valid = DATASETS.get(name).splits
        for key, split in splits.items():
            if isinstance(split, str) and split not in valid:
                problems.append(f"{key}={split!r}: {name} has no split {split!r}; its splits: {', '.join(valid)}")
    return problems + eval_split_problems(cfg, transfers)


def eval_split_problems(cfg: dict, transfers) -> list[str]:
    """A source trained on a split that shares frames with the one it is scored on in-domain (cells.trained_on_scored)
    would report training images as a test score: refused unless `train.allow_eval_split` says it is meant."""
    from .cells import trained_on_scored

    train, ecfg = cfg["train"], cfg["eval"]
    if train.get("allow_eval_split") is True or ecfg.get("in_domain") is False:
        return []
    problems = []
    for part in dict.fromkeys(p for t in transfers for p in trained_on_scored(t.source, train["split"], ecfg["split"])):
        problems.append(f"train.split={train['split']!r}: {part} is scored in-domain on eval.split={ecfg['split']!r}, "
                        "which holds images of the training split, so its in-domain score would be taken on training "
                        "images; train on another split (e.g. --set train.split=train), or --set "
                        "train.allow_eval_split=true to do it on purpose (the table and the protocol card then say so)")
    return problems


def model_problems(cfg: dict) -> list[str]:
    """Unknown backbones or heads (names or globs), an output stride a head cannot be built at, and one a backbone
    with a fixed pyramid (a ViT) does not have."""
    from .models import BACKBONES, HEADS
    from .models.factory import fixed_output_stride

    problems, found = [], {"backbones": [], "heads": []}
    for key, registry in (("backbones", BACKBONES), ("heads", HEADS)):
        for pattern in _names(cfg[key]):
            try:
                found[key] += registry.expand([pattern])
            except KeyError as e:
                problems.append(f"{key}: {e.args[0]}")
    stride = cfg["model"]["output_stride"]
    fixed = {b: fixed_output_stride(b) for b in dict.fromkeys(found["backbones"])}
    for backbone, own in fixed.items():
        if own is not None and stride is not None and stride != own:
            problems.append(f"model.output_stride={stride}: {backbone} gives a fixed pyramid whose coarsest stride is "
                            f"{own}; set model.output_stride null (--set model.output_stride=null) for it")
    if type(stride) is int and (not fixed or any(own is None for own in fixed.values())):  # ResNets choose theirs
        for head in dict.fromkeys(found["heads"]):
            supported = HEADS.get(head).output_strides
            if supported is not None and stride not in supported:
                problems.append(f"model.output_stride={stride}: head {head!r} supports "
                                f"{', '.join(map(str, supported))}")
    return problems


def method_problems(cfg: dict) -> list[str]:
    """Unknown methods (names or globs), options no method has, and option values of the wrong type."""
    from .config import check_like_default
    from .methods import METHODS, MethodError, load_plugins

    try:
        load_plugins()
    except MethodError as e:
        return [str(e)]
    problems = []
    for pattern in _names(cfg["methods"]):
        try:
            METHODS.expand([pattern])
        except KeyError as e:
            problems.append(f"methods: {e.args[0]}")
    settings = cfg["method"] if isinstance(cfg["method"], dict) else {}
    for name, options in settings.items():
        if name not in METHODS:
            problems.append(f"method.{name}: unknown method; valid names: {METHODS.listing()}")
            continue
        defaults = METHODS.get(name).defaults
        for option, value in (options if isinstance(options, dict) else {}).items():
            if option not in defaults:
                problems.append(f"method.{name}.{option}: unknown option; {name}'s options: "
                                f"{', '.join(defaults) or 'none'}")
                continue
            options[option], problem = check_like_default(f"method.{name}.{option}", value, defaults[option])
            if problem:
                problems.append(problem)
    return problems


def placement_problems(cfg: dict) -> list[str]:
    """Sources a method cannot train on (Method.source_problem: cross-domain MixStyle on one domain), and backbone x
    head x method combinations where a method cannot place its modules (a whitening layer where IBN-b already has an
    IN), found by building each network as its cells build it (network.py, aux head included) on the meta device
    (shapes only, instant); all before any work."""
    import torch

    from .config import model_settings
    from .methods import METHODS, MethodError, OptionError, build_method, method_options
    from .models import BACKBONES, HEADS
    from .network import NetworkError, build_cell_model

    problems, methods = [], {}
    for name in METHODS.expand(cfg["methods"]):
        try:  # a method's own checks of its option values (ShadeMethod, PASTAMethod)
            methods[name] = method_options(name, cfg["method"].get(name))
        except ValueError as e:
            problems.append(option_problem(name, e))
    for transfer in parse_specs(cfg["specs"]):
        for name, options in methods.items():
            problem = build_method(name, options).source_problem(list(source_parts(transfer.source)))
            if problem:
                problems.append(f"methods: {name} on {transfer.source}: {problem}")
    for backbone in BACKBONES.expand(cfg["backbones"]):
        for head in HEADS.expand(cfg["heads"]):
            for name, options in methods.items():
                with torch.device("meta"):
                    try:
                        build_cell_model(backbone, head, model_settings(cfg["model"]), name, options,
                                         pretrained=False)
                    except MethodError as e:
                        if isinstance(e, OptionError):  # an unknown place or mode: wrong on every backbone
                            problems.append(option_problem(name, e))
                        else:
                            problems.append(f"methods: {name} on {backbone} + {head}: {e}; leave that backbone or "
                                            "method out, or run them as separate studies")
                    except NetworkError as e:  # the backbone, head and model settings do not make a network
                        problems.append(f"{backbone} + {head}: {e}")
                    except ValueError as e:  # a layer refusing an option value (p=5, std=-1): not the backbone's
                        problems.append(option_problem(name, e))
    return list(dict.fromkeys(problems))


def option_problem(name: str, error: ValueError) -> str:
    """An option value a method refuses: the method's message, and where the option is set."""
    text = str(error)
    return ("" if text.startswith(f"method.{name}.") else f"method.{name}: ") + (
        f"{text}; change that option (--set method.{name}.OPTION=VALUE; `segbench methods {name}` lists its defaults)")
