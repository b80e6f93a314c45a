"""`hf-ddpm`: the command line; registers each subcommand of `hf_ddpm/commands/` and applies the one error policy."""

from __future__ import annotations

import sys

from .commands import Command, card, demo, evaluate, export, plot, push, sample
from .options import OptionParser, debug_requested, run_guarded

COMMANDS: tuple[Command, ...] = (sample.COMMAND, evaluate.COMMAND, plot.COMMAND, card.COMMAND, push.COMMAND,
                                 demo.COMMAND, export.COMMAND)


def add_commands(parser: OptionParser, commands: tuple[Command, ...], depth: int = 0) -> None:
    subparsers = parser.add_subparsers(dest=f"command_{depth}", required=True, metavar="COMMAND",
                                       parser_class=OptionParser)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help,
                                    dataclass_types=[command.config] if command.config else [],
                                    renamed=command.renamed)
        if command.subcommands:
            add_commands(sub, command.subcommands, depth + 1)
        else:
            sub.set_defaults(_command=command, _parser=sub)


def build_parser() -> OptionParser:
    parser = OptionParser(prog="hf-ddpm", description="DDPMs on the Hugging Face stack. "
                                                      "`hf-ddpm COMMAND --help` lists a command's options.")
    add_commands(parser, COMMANDS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    namespace, unknown = build_parser().parse_known_args(argv)
    command, parser = namespace._command, namespace._parser
    if unknown:
        parser.error(parser.unknown_option(unknown[0]))

    def run() -> int | None:
        (config,) = parser.build(vars(namespace)) if command.config else (None,)
        return command.run(config)

    return run_guarded(run, prog=parser.prog, debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
