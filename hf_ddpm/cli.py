"""`hf-ddpm`: the command line. Each subcommand is defined next to the code it drives, by a module-level
`register_cli(subparsers)` that adds its parser and sets `run=<function(args) -> int | None>`."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = ("hf_ddpm.hub", "hf_ddpm.evaluation", "hf_ddpm.plots")

# What a user can fix by changing the command: reported as one line and exit status 2, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-ddpm", description="DDPMs on the Hugging Face stack.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        message = " ".join(str(error).split())  # always a single line
        print(f"hf-ddpm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
