"""Published numbers as data: the files under `experiments/published/`, read with `yaml.safe_load` and checked strictly
(a `PublishedError` names the file, the field and the fix in one line), and which of their tables a report shows.

One file per paper (`robustnet.yaml`, `rein.yaml`, ...), not per experiment file: one paper's table often serves
several experiment files (RobustNet's Table 1 is `robustnet_dg.yaml`'s backbone rows and `robustnet_methods.yaml`'s
method rows), and a number must live in exactly one place. Each table names the experiment files it is the reference
for (`experiments:`); `segbench report` picks the tables that name the study (`auto`, below).

A file (top-level keys starting with `x-` are ignored: they hold what YAML anchors repeat, such as a protocol
several tables share):

    paper: {authors, title, venue, arxiv}                    who wrote it (arxiv: the identifier, e.g. 2103.15597)
    tables:
      - name: table1                                         unique in the file; `robustnet:table1` names it
        table: Table 1                                       the paper's own label for it
        title: ...                                           what it shows
        page: ...                                            (optional) page or section, only where read
        experiments: [robustnet_dg, robustnet_methods]       the experiment files (stems) it is the reference for
        source: gta5                                         segbench dataset names: what the rows trained on,
        targets: [cityscapes, bdd100k, mapillary]            the paper's columns in its order,
        mean_over: [cityscapes, bdd100k, mapillary]          (optional) the targets its average column averages
        decimals: 2                                          how many decimals the paper prints
        verified: false                                      true only where the numbers were read in the paper's
        where: ...                                           own text; `where` says where they were read or seen
        code: {url, commit, config}                          (optional) the official code the numbers come from
        classes: {value: 19, from: code, where: ...}         (optional) the class set (labels.CLASS_SETS: 19, 16, 13)
        protocol:                                            (optional) a partial protocol card: only what a source
          iterations: {value: 40000, from: code, where: ...}     states, under the card's own field names
        note: ...                                            (optional) anything a reader must know
        rows:
          - label: Baseline                                  the paper's row label
            measured: {backbone: resnet50, method: erm}      the segbench row it is (absent: none; then a note)
            miou: {cityscapes: 28.95, ..., mean: 27.42}      target -> number, or null where the paper has one
            pixel_acc: {...}                                 (optional) the same, where the paper gives it
            verified, where, note                            (optional) the row's own, over the table's

`protocol` fields are the protocol card's dotted names (protocol_card.protocol_card: `iterations`, `global_batch`, `split`,
`train.crop`, `model.output_stride`, `eval.protocol`, `eval.mode`, `checkpoint`, ...) plus `head` and `backbone` (the
record's), so the report compares them with a measured row's card field by field (report/reproduced.py). `from`
says where each value was read: `paper` (its text), `code` (the official code), `maintainer` (a maintainer's
statement); `where` names the place. `measured` maps a paper row to records: `backbone` (a name, or a list of names
that are all this row), `method` (default erm) and any `model.*` / `train.*` settings the record's config must hold
(RobustNet's "IBN-Net" row: resnet50_ibn_b with `model: {pretrained: torchvision}`).

Which tables a study's report shows (`resolve`): `auto` (the default), every shipped table whose `experiments` names
the study, i.e. the results directory's name, which is the experiment file's stem unless `--name` changed it; `none`;
or a file (a path, or a shipped file's name such as `robustnet`): all its tables, whatever the study is called.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ADDED_SETTINGS, DEFAULTS, NON_IDENTITY_KEYS, experiments_dir
from ..labels import CLASS_SETS

PUBLISHED_DIR = "published"  # under experiments/
AUTO, NONE = "auto", "none"
METRICS = {"miou": "mIoU", "pixel_acc": "pixel acc."}
MEAN = "mean"  # the key of a row's average column
ORIGINS = ("paper", "code", "maintainer")
#: card fields a protocol may state: the top-level ones (protocol_card.protocol_card), and `head`/`backbone`, the record's
TOP_FIELDS = ("sources", "split", "source_weights", "training_classes", "global_batch", "iterations", "checkpoint",
              "head", "backbone")
#: train settings the card moves to the top level, under these names
MOVED = {"iters": "iterations", "batch_size": "global_batch", "split": "split", "source_weights": "source_weights"}
SECTION_FIELDS = {
    "train": sorted(k for k in DEFAULTS["train"] if k not in NON_IDENTITY_KEYS["train"] and k not in MOVED),
    "model": sorted(DEFAULTS["model"]),
    "eval": sorted(k for k in DEFAULTS["eval"] if k not in NON_IDENTITY_KEYS["eval"]),
}
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
ARXIV = re.compile(r"^\d{4}\.\d{4,5}$")
COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class PublishedError(ValueError):
    """A published-numbers file that cannot be used; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Fact:
    """A value with where it was read: a protocol field, or a table's class set."""
    value: Any
    origin: str
    where: str


@dataclass(frozen=True)
class Selector:
    """Which records a paper row is: any of `backbones`, trained with `method`, whose config holds `settings`
    ({"model.pretrained": "torchvision"})."""
    backbones: tuple[str, ...]
    method: str
    settings: dict = field(hash=False, compare=False)

    def text(self) -> str:
        names = " or ".join(self.backbones) + (f" + {self.method}" if self.method != "erm" else "")
        return names + "".join(f" [{k}={v}]" for k, v in self.settings.items())


@dataclass(frozen=True)
class PublishedRow:
    label: str
    measured: Selector | None
    values: dict = field(hash=False, compare=False)  # metric -> {target or MEAN: number or None}
    verified: bool = False
    where: str = ""
    note: str = ""

    def numbers(self) -> int:
        return sum(v is not None for by_target in self.values.values() for v in by_target.values())


@dataclass(frozen=True)
class Paper:
    authors: str
    title: str
    venue: str
    arxiv: str

    def short(self) -> str:
        return f"{self.authors.split(',')[0].strip()} et al., {self.venue}"


@dataclass(frozen=True)
class PublishedTable:
    file: Path
    name: str
    paper: Paper
    table: str
    title: str
    experiments: tuple[str, ...]
    source: str
    targets: tuple[str, ...]
    verified: bool
    where: str
    decimals: int
    rows: tuple[PublishedRow, ...]
    mean_over: tuple[str, ...] = ()
    page: str = ""
    code: dict = field(default_factory=dict, hash=False, compare=False)
    classes: Fact | None = None
    protocol: dict = field(default_factory=dict, hash=False, compare=False)  # dotted card field -> Fact
    note: str = ""

    @property
    def key(self) -> str:
        """`robustnet:table1`: the file's stem and the table's name."""
        return f"{self.file.stem}:{self.name}"

    def heading(self) -> str:
        return f"{self.paper.short()}, {self.table}: {self.title}"

    def numbers(self) -> tuple[int, int]:
        """(numbers on file, of which verified)."""
        return (sum(r.numbers() for r in self.rows), sum(r.numbers() for r in self.rows if r.verified))


# --- reading and checking ---------------------------------------------------------------------------------------

class _Where:
    """The file and the field being read, for one-line errors."""

    def __init__(self, file: Path, path: str = ""):
        self.file, self.path = file, path

    def at(self, key) -> "_Where":
        step = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else str(key))
        return _Where(self.file, self.path + step)

    def fail(self, problem: str, fix: str) -> PublishedError:
        return PublishedError(f"{self.file}: {self.path or 'top level'}: {problem}; {fix}")


def _mapping(value, where: _Where, keys: dict[str, bool], fix: str) -> dict:
    """A mapping with only `keys` (name -> required)."""
    if not isinstance(value, dict):
        raise where.fail(f"expected a mapping, got {type(value).__name__}", fix)
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise where.fail(f"unknown field {unknown[0]!r}", f"valid fields here: {', '.join(keys)}")
    missing = [k for k, required in keys.items() if required and k not in value]
    if missing:
        raise where.at(missing[0]).fail("missing", fix)
    return value


def _text(value, where: _Where, fix: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.fail(f"expected a non-empty text, got {value!r}", fix)
    if pattern is not None and not pattern.match(value):
        raise where.fail(f"{value!r} is not of the form {pattern.pattern}", fix)
    return value.strip()


def _flag(value, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.fail(f"expected true or false, got {value!r}",
                         "true only where the number was read in the paper's own text")
    return value


def _names(value, where: _Where, fix: str, empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (not value and not empty):
        raise where.fail(f"expected a list of names, got {value!r}", fix)
    names = tuple(_text(v, where.at(i), fix, NAME) for i, v in enumerate(value))
    if len(set(names)) != len(names):
        raise where.fail(f"{names} names one entry twice", "name each once")
    return names


def _fact(value, where: _Where) -> Fact:
    value = _mapping(value, where, {"value": True, "from": True, "where": True},
                     "write {value: V, from: paper|code|maintainer, where: \"the page, file or issue\"}")
    origin = value["from"]
    if origin not in ORIGINS:
        raise where.at("from").fail(f"{origin!r} is not one of {', '.join(ORIGINS)}",
                                    "paper: read in its text; code: the official code; maintainer: an issue answer")
    return Fact(value["value"], origin, _text(value["where"], where.at("where"), "say where the value was read"))


def _protocol_field(key: str, where: _Where) -> str:
    """A protocol field name, checked against the card's: `iterations`, `train.crop`, `targets.mapillary.split`."""
    if not isinstance(key, str):
        raise where.fail(f"field name {key!r} is not text", "use the protocol card's dotted names")
    head, _, rest = key.partition(".")
    if not rest and head in TOP_FIELDS:
        return key
    if head == "resolution" and rest:
        return key
    if head == "targets" and rest.count(".") >= 1:
        target, _, sub = rest.partition(".")
        if sub == "classes":
            raise where.at(key).fail("a class set is the table's `classes`", "move it there: classes: {value: 19, ...}")
        if sub == "split" or sub.startswith("transform."):
            return key
    if head == "train" and rest in MOVED:
        raise where.at(key).fail(f"the card names train.{rest} {MOVED[rest]!r}", f"write {MOVED[rest]}")
    if head in SECTION_FIELDS and rest in SECTION_FIELDS[head]:
        return key
    valid = list(TOP_FIELDS) + [f"{s}.{k}" for s, keys in SECTION_FIELDS.items() for k in keys]
    raise where.at(key).fail("not a protocol card field",
                             f"use one of {', '.join(valid)}, resolution.NAME, targets.NAME.split or "
                             "targets.NAME.transform.*")


def _selector(value, where: _Where) -> Selector:
    value = _mapping(value, where, {"backbone": True, "method": False, "model": False, "train": False},
                     "write {backbone: NAME or [NAMES], method: NAME, model: {KEY: VALUE}}")
    backbones = _names(value["backbone"], where.at("backbone"), "a segbench backbone name, or a list of them")
    method = _text(value.get("method", "erm"), where.at("method"), "a segbench method name (erm: plain training)",
                   NAME)
    settings = {}
    for section in ("model", "train"):
        given = value.get(section) or {}
        if not isinstance(given, dict):
            raise where.at(section).fail(f"expected a mapping, got {given!r}", f"write {section}: {{KEY: VALUE}}")
        for key, setting in given.items():
            if key not in DEFAULTS[section]:
                raise where.at(section).at(key).fail(f"not a {section} setting",
                                                     f"valid: {', '.join(sorted(DEFAULTS[section]))}")
            settings[f"{section}.{key}"] = setting
    return Selector(backbones, method, settings)


def _values(value, where: _Where, targets: tuple[str, ...], mean_over: tuple[str, ...]) -> dict:
    if not isinstance(value, dict) or not value:
        raise where.fail(f"expected a mapping target -> number, got {value!r}",
                         "write {TARGET: NUMBER or null, ...} over the table's targets")
    out = {}
    for target, number in value.items():
        if target == MEAN and not mean_over:
            raise where.at(target).fail("the table has no mean_over", "list the targets its average column averages")
        if target != MEAN and target not in targets:
            raise where.at(target).fail("not one of the table's targets", f"use {', '.join(targets)} or {MEAN}")
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))
                                   or not 0 <= number <= 100 or math.isnan(number)):
            raise where.at(target).fail(f"expected a number in 0..100 or null, got {number!r}",
                                        "write the value as the paper prints it, in %; null where not on file")
        out[target] = None if number is None else float(number)
    return out


ROW_FIELDS = {"label": True, "measured": False, "miou": False, "pixel_acc": False, "verified": False, "where": False,
              "note": False}


def _row(value, where: _Where, table: dict) -> PublishedRow:
    value = _mapping(value, where, ROW_FIELDS, "write {label: ..., measured: {...}, miou: {TARGET: NUMBER}}")
    label = _text(value["label"], where.at("label"), "the paper's row label")
    values = {m: _values(value[m], where.at(m), table["targets"], table["mean_over"]) for m in METRICS if m in value}
    note = _text(value["note"], where.at("note"), "say what the reader must know") if "note" in value else ""
    if not values:
        raise where.fail("no miou or pixel_acc", "give the row's numbers (null where the paper has one not on file)")
    if any(v is None for by in values.values() for v in by.values()) and not note:
        raise where.at("note").fail("missing: a row with a null value needs one",
                                    "say why the number is not on file")
    measured = _selector(value["measured"], where.at("measured")) if value.get("measured") is not None else None
    if measured is None and not note:
        raise where.at("note").fail("missing: a row without `measured` needs one", "say why no segbench row is it")
    verified = _flag(value.get("verified", table["verified"]), where.at("verified"))
    row_where = _text(value["where"], where.at("where"), "where in the source the row is") if "where" in value else ""
    if verified and not (row_where or table["where"]):
        raise where.at("where").fail("verified without a where", "say where in the paper's text it was read")
    return PublishedRow(label, measured, values, verified, row_where, note)


TABLE_FIELDS = {"name": True, "table": True, "title": True, "page": False, "experiments": True, "source": True,
                "targets": True, "mean_over": False, "decimals": True, "verified": True, "where": True, "code": False,
                "classes": False, "protocol": False, "note": False, "rows": True}


def _table(value, where: _Where, paper: Paper, file: Path) -> PublishedTable:
    value = _mapping(value, where, TABLE_FIELDS, "see segbench/report/published.py for a table's fields")
    out: dict = {"name": _text(value["name"], where.at("name"), "a short name, unique in the file", NAME),
                 "table": _text(value["table"], where.at("table"), "the paper's label, e.g. Table 1"),
                 "title": _text(value["title"], where.at("title"), "what the table shows"),
                 "experiments": _names(value["experiments"], where.at("experiments"),
                                       "experiment file stems, e.g. [robustnet_dg]", empty=True),
                 "source": _text(value["source"], where.at("source"), "the dataset the rows trained on", NAME),
                 "targets": _names(value["targets"], where.at("targets"), "the datasets of the paper's columns"),
                 "verified": _flag(value["verified"], where.at("verified")),
                 "where": _text(value["where"], where.at("where"), "where the numbers were read or seen")}
    if "page" in value:
        out["page"] = _text(value["page"], where.at("page"), "the page or section, only where read")
    if "note" in value:
        out["note"] = _text(value["note"], where.at("note"), "say what the reader must know")
    out["mean_over"] = _names(value.get("mean_over") or [], where.at("mean_over"), "targets", empty=True)
    stray = [t for t in out["mean_over"] if t not in out["targets"]]
    if stray:
        raise where.at("mean_over").fail(f"{stray[0]!r} is not one of the targets", "list targets of this table")
    decimals = value["decimals"]
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 3:
        raise where.at("decimals").fail(f"expected 0..3, got {decimals!r}", "how many decimals the paper prints")
    out["decimals"] = decimals
    if "code" in value:
        code = _mapping(value["code"], where.at("code"), {"url": True, "commit": False, "config": False},
                        "write {url: ..., commit: SHA, config: PATH}")
        if "commit" in code:
            _text(code["commit"], where.at("code").at("commit"), "a git commit (7 to 40 hex digits)", COMMIT)
        out["code"] = {k: _text(v, where.at("code").at(k), "non-empty text") for k, v in code.items()}
    if "classes" in value:
        classes = _fact(value["classes"], where.at("classes"))
        if classes.value not in CLASS_SETS:
            raise where.at("classes").at("value").fail(f"{classes.value!r} is not a class set",
                                                       f"one of {', '.join(map(str, CLASS_SETS))}")
        out["classes"] = classes
    protocol = value.get("protocol") or {}
    if not isinstance(protocol, dict):
        raise where.at("protocol").fail(f"expected a mapping, got {protocol!r}", "write {FIELD: {value, from, where}}")
    out["protocol"] = {_protocol_field(k, where.at("protocol")): _fact(v, where.at("protocol").at(k))
                       for k, v in protocol.items()}
    rows = value["rows"]
    if not isinstance(rows, list):
        raise where.at("rows").fail(f"expected a list, got {rows!r}", "a list of rows ([] with a note if none)")
    if not rows and "note" not in out:
        raise where.at("note").fail("missing: a table without rows needs one", "say why no number is on file")
    out["rows"] = tuple(_row(r, where.at("rows").at(i), out) for i, r in enumerate(rows))
    return PublishedTable(file=file, paper=paper, **out)


def load_file(path: str | Path) -> list[PublishedTable]:
    """Every table of one published-numbers file; PublishedError names the field and the fix."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PublishedError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the syntax") from None
    where = _Where(path)
    if isinstance(data, dict):  # `x-...` keys hold what YAML anchors repeat (a protocol shared by tables)
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    data = _mapping(data, where, {"paper": True, "tables": True}, "write paper: {...} and tables: [...]")
    paper = _mapping(data["paper"], where.at("paper"), {"authors": True, "title": True, "venue": True, "arxiv": True},
                     "write {authors, title, venue, arxiv}")
    paper = Paper(_text(paper["authors"], where.at("paper").at("authors"), "the authors' names"),
                  _text(paper["title"], where.at("paper").at("title"), "the paper's title"),
                  _text(paper["venue"], where.at("paper").at("venue"), "e.g. CVPR 2021"),
                  _text(str(paper["arxiv"]), where.at("paper").at("arxiv"),
                        'the arXiv identifier, quoted (YAML reads 2001.10000 as a number): arxiv: "2103.15597"', ARXIV))
    if not isinstance(data["tables"], list) or not data["tables"]:
        raise where.at("tables").fail("expected a non-empty list", "one entry per table of the paper")
    tables = [_table(t, where.at("tables").at(i), paper, path) for i, t in enumerate(data["tables"])]
    names = [t.name for t in tables]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise where.at("tables").fail(f"name {twice[0]!r} used twice", "give each table its own name")
    return tables


def published_dir() -> Path:
    return experiments_dir() / PUBLISHED_DIR


def shipped_files() -> list[Path]:
    return sorted(published_dir().glob("*.yaml"))


def load_all(files: list[Path] | None = None) -> list[PublishedTable]:
    return [t for f in (shipped_files() if files is None else files) for t in load_file(f)]


def published_file(spec: str | Path) -> Path:
    """A path as given, or a shipped file's name (`robustnet`, `robustnet.yaml`)."""
    path = Path(spec)
    if path.is_file():
        return path
    for candidate in (published_dir() / path.name, published_dir() / f"{path.name}.yaml"):
        if len(path.parts) == 1 and candidate.is_file():
            return candidate
    shipped = ", ".join(p.stem for p in shipped_files()) or "none"
    raise PublishedError(f"--published {spec}: no such file; pass a path, a shipped file's name ({shipped}), "
                         f"{AUTO} or {NONE}")


def resolve(spec: str | Path | None, study: str) -> list[PublishedTable]:
    """The tables a report of `study` shows: `auto`, `none` (or None), or a file (see the module docstring)."""
    if spec is None or str(spec) == NONE:
        return []
    if str(spec) == AUTO:
        return [t for t in load_all() if study in t.experiments]
    return load_file(published_file(spec))


def measured_default(key: str):
    """What a card or config holds for a dotted `section.key` it leaves out: the value the setting had before it
    existed (config.ADDED_SETTINGS), else its default."""
    section, _, name = key.partition(".")
    if name in ADDED_SETTINGS.get(section, {}):
        return ADDED_SETTINGS[section][name]
    return DEFAULTS.get(section, {}).get(name) if isinstance(DEFAULTS.get(section), dict) else None
