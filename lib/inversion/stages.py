"""``python -m inversion.stages ...``: the old name of the stage-cache command line, kept as an alias
(the README's GPU notes and older instructions use it). The command is ``inversion.pipeline``'s."""

import sys

from inversion.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m inversion.stages"))
