"""Command line of the clip_tools package (`python -m clip_tools`, run through tools/clip-tools):
the argument parser and the dispatch to the command modules.

Each command module has `register(sub)`, which adds its subcommand parsers to `sub` and sets `fn` on
each (called with the parsed arguments). To add a command, write a module with `register()` (heavy
imports inside the command functions, so that `--help` needs no venv) and list it in
COMMAND_MODULES, whose order is the order in `--help`.
"""

from __future__ import annotations

import argparse

from . import __doc__ as DESCRIPTION
from . import baselines, digits, export, fixtures, photos, search_baseline

COMMAND_MODULES = (fixtures, digits, photos, export, baselines, search_baseline)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tools/clip-tools", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
