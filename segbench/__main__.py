"""`python -m segbench COMMAND ...` = the `segbench` console script."""
import sys

from .cli import main

sys.exit(main())
