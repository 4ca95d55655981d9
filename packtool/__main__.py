"""``python -m packtool``: the command line (same as the ``packtool`` console script).

The entry point sits on top of all three layers: it is the one module of ``packtool/`` that
imports the CLI (torchrun launches ``-m packtool``).
"""

from packtool.cli.main import main

if __name__ == "__main__":
    main(prog_name="packtool")
