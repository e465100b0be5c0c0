"""The published numbers on file (experiments/published/*.yaml): each file loads, a bad one is refused in one line that
names the file, the field and the fix, the numbers hold together (each average is the mean of its columns), no
experiment file keeps a published number in a comment, `segbench published` lists them, and the README's count is
the files' count."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import yaml

from segbench.cli import main as segbench
from segbench.config import experiments_dir
from segbench.report.published import MEAN, PublishedError, load_all, load_file, shipped_files

ROOT = Path(__file__).resolve().parent.parent
#: experiment files that reproduce a paper's table, each the reference of some published table
CLAIMING = {"robustnet_dg", "robustnet_methods", "ibnnet_cross_domain", "synthia_dg"}
#: experiment files a table may name before they exist: rein_dg.yaml, the foundation-model file (issue 25)
PENDING = {"rein_dg"}

GOOD = {"paper": {"authors": "A, B", "title": "T", "venue": "V 2020", "arxiv": "2001.00001"},
        "tables": [{"name": "t1", "table": "Table 1", "title": "gta -> city", "experiments": [], "source": "gta",
                    "targets": ["city", "bdd"], "mean_over": ["city", "bdd"], "decimals": 1, "verified": False,
                    "where": "a later paper's Table 2",
                    "protocol": {"iterations": {"value": 3, "from": "code", "where": "train.sh"}},
                    "rows": [{"label": "R", "measured": {"backbone": "r18"},
                              "miou": {"city": 10.0, "bdd": 20.0, MEAN: 15.0}}]}]}


def test_every_shipped_file_loads_and_names_existing_experiment_files():
    tables = load_all()
    assert {f.stem for f in shipped_files()} >= {"robustnet", "ibnnet", "rein", "shade", "pasta"}
    stems = {p.stem for p in experiments_dir().glob("*.yaml")}
    named = {e for t in tables for e in t.experiments}
    assert CLAIMING <= named, f"experiment files without a published table: {CLAIMING - named}"
    assert named <= stems | PENDING, f"tables name unknown experiment files: {named - stems - PENDING}"
    assert len({t.key for t in tables}) == len(tables)


def test_verified_numbers_say_where_in_the_paper_text_they_were_read():
    verified = [(t, r) for t in load_all() for r in t.rows if r.verified and r.numbers()]
    assert verified  # Rein's tables
    for table, row in verified:
        assert table.file.stem == "rein" and "arXiv v1 text" in table.where, (table.key, row.label)
    for table in load_all():
        if table.file.stem in ("robustnet", "ibnnet", "shade", "pasta"):
            assert not any(r.verified for r in table.rows), table.key  # none of theirs was read in the paper


def test_each_average_is_the_mean_of_its_columns_to_the_papers_rounding():
    """Catches a transcription slip: the average column equals the mean of the row's values within what rounding
    each printed value allows (half a unit of the last decimal on each value and on the average)."""
    checked = 0
    for table in load_all():
        for row in table.rows:
            values = row.values.get("miou", {})
            parts = [values.get(t) for t in table.mean_over]
            if values.get(MEAN) is None or any(p is None for p in parts):
                continue
            tolerance = 10 ** -table.decimals + 1e-9
            gap = abs(statistics.fmean(parts) - values[MEAN])
            assert gap <= tolerance or "does not equal the mean" in row.note, (table.key, row.label, gap)
            checked += 1
    assert checked >= 15


def _comment_numbers(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))


def test_no_published_number_lives_only_in_an_experiment_files_comment():
    numbers = {f"{v:.{t.decimals}f}" for t in load_all() for r in t.rows for by in r.values.values()
               for v in by.values() if v is not None and v >= 10}
    for path in experiments_dir().glob("*.yaml"):
        comments = _comment_numbers(path)
        found = sorted(n for n in numbers if re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", comments))
        assert not found, f"{path.name} keeps published numbers in a comment: {found}; move them to a published file"


def _write(tmp_path, data) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _changed(change) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    change(data)
    return data


def _table(data):
    return data["tables"][0]


def _row(data):
    return data["tables"][0]["rows"][0]


BAD = [
    (lambda d: _table(d).pop("where"), "tables[0].where: missing"),
    (lambda d: _table(d).update(verified="yes"), "tables[0].verified: expected true or false"),
    (lambda d: _row(d)["miou"].update(city=128), "tables[0].rows[0].miou.city: expected a number in 0..100 or null"),
    (lambda d: _row(d)["miou"].update(nowhere=1.0), "tables[0].rows[0].miou.nowhere: not one of the table's targets"),
    (lambda d: _row(d)["miou"].update(city=None), "tables[0].rows[0].note: missing: a row with a null value needs one"),
    (lambda d: _row(d).pop("measured"), "tables[0].rows[0].note: missing: a row without `measured` needs one"),
    (lambda d: _row(d).update(colour="red"), "tables[0].rows[0]: unknown field 'colour'"),
    (lambda d: _table(d)["protocol"].update({"train.crp": {"value": 1, "from": "code", "where": "x"}}),
     "tables[0].protocol.train.crp: not a protocol card field"),
    (lambda d: _table(d)["protocol"].update({"train.iters": {"value": 1, "from": "code", "where": "x"}}),
     "tables[0].protocol.train.iters: the card names train.iters 'iterations'; write iterations"),
    (lambda d: _table(d)["protocol"]["iterations"].update({"from": "memory"}),
     "tables[0].protocol.iterations.from: 'memory' is not one of paper, code, maintainer"),
    (lambda d: _table(d).update(classes={"value": 17, "from": "code", "where": "x"}),
     "tables[0].classes.value: 17 is not a class set"),
    (lambda d: _table(d).update(mean_over=["city", "gta"]), "tables[0].mean_over: 'gta' is not one of the targets"),
    (lambda d: d["paper"].update(arxiv="soon"), "paper.arxiv: 'soon' is not of the form"),
    (lambda d: _row(d)["measured"].update(model={"pretrainde": "x"}),
     "tables[0].rows[0].measured.model.pretrainde: not a model setting"),
    (lambda d: d["tables"].append(d["tables"][0]), "tables: name 't1' used twice"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(":")[0] + ":" + m.split(":")[1][:20] for _, m in BAD])
def test_a_bad_file_is_refused_in_one_line_naming_the_file_and_field(tmp_path, change, message):
    path = _write(tmp_path, _changed(change))
    with pytest.raises(PublishedError) as e:
        load_file(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text and "; " in text


def test_the_good_file_loads_and_bad_yaml_is_named(tmp_path):
    (table,) = load_file(_write(tmp_path, GOOD))
    assert table.key == "bad:t1" and table.numbers() == (3, 0) and table.protocol["iterations"].value == 3
    path = _write(tmp_path, "paper: [unclosed\n")
    with pytest.raises(PublishedError, match=rf"^{re.escape(str(path))}: not valid YAML .*; fix the syntax$"):
        load_file(path)


def test_segbench_published_lists_the_tables_and_exits_2_on_a_bad_file(tmp_path, capsys):
    assert segbench(["published"]) == 0
    out = capsys.readouterr().out
    tables = load_all()
    numbers, verified = (sum(t.numbers()[i] for t in tables) for i in (0, 1))
    assert out.startswith(f"{numbers} published numbers on file in {len(tables)} table(s) of "
                          f"{len(shipped_files())} file(s), {verified} of them verified")
    assert ("| robustnet:table1 | Choi et al., CVPR 2021, Table 1 | gta5 -> cityscapes, bdd100k, mapillary, synthia"
            in out)
    assert "| rein:table3 | Wei et al., CVPR 2024, Table 3 |" in out and "### " not in out

    assert segbench(["published", "--unverified"]) == 0
    out = capsys.readouterr().out
    assert ("| Baseline | resnet50 | mIoU: cityscapes 28.95, bdd100k 25.14, mapillary 28.18, synthia –, mean 27.42 "
            "| no |") in out
    # Rein's paper tables were read in its text; only its README's ACDC number was not
    assert "+Rein (ours)" not in out and "### rein:table" not in out and "### rein:readme_acdc" in out

    assert segbench(["published", "rein", "--rows", "--experiment", "rein_dg"]) == 0
    out = capsys.readouterr().out
    assert "| +Rein (ours) | dinov2_vitl14_p16 or dinov2_vitl14 + rein | mIoU: cityscapes 66.4, bdd100k 60.4, " \
           "mapillary 66.1, mean 64.3 | yes |" in out
    assert "robustnet:" not in out

    bad = _write(tmp_path, _changed(lambda d: _table(d).update(verified="yes")))
    assert segbench(["published", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"segbench published: {bad}: tables[0].verified")


def test_the_readme_states_how_many_numbers_are_on_file_and_verified():
    tables = load_all()
    numbers, verified = (sum(t.numbers()[i] for t in tables) for i in (0, 1))
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{numbers} published numbers are on file" in readme
    assert f"{verified} of them read in the paper's own text" in readme
    assert "segbench published --unverified" in readme
