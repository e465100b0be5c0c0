"""A results directory written from hand-built records, laid out as the runner lays it out (cells/NAME/record.json)."""
from segbench.io import write_json


def write_study(root, records, done=True):
    for rec in records:
        cell = root / "cells" / f"{rec['source']}__{rec['backbone']}__{rec['head']}__s{rec['seed']}__{rec['cell_id']}"
        write_json(cell / "record.json", rec)
        if done:
            (cell / "done").touch()
    return root
