"""Names of the files in a cell directory (`results/STUDY/cells/CELL/`): written by the runner, read back by the
model loader, the launchers, the report and the analyses. One place, so they cannot drift apart."""

RECORD = "record.json"
DONE = "done"
FINAL_WEIGHTS = "model_final.pt"
CHECKPOINTS = "checkpoints"
CELLS = "cells"
