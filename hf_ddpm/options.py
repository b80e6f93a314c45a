"""Declarative options: dataclass fields that carry their help, choices and range, the parser built from them,
the checks derived from them, and the one error policy of every command line (train.py and `hf-ddpm`).

An entry point declares its options once, as dataclass fields made with `option(...)`:

    @dataclass
    class EvaluateConfig:
        num_samples: int = option(10_000, "generated images for FID/KID", range="[1, inf)")

`OptionParser` (transformers' `HfArgumentParser`) turns the fields into flags whose `--help` shows the help,
default, choices and range; `check_options` checks any instance (from flags, a YAML preset or Python) against the
same declarations, and the config's own `validate()` adds the checks between fields. Every field states how it
is checked: `choices`, `range`, a `check` callable, or `free="why any value is fine or where it is checked"`;
a test walks every parser and fails for a field without help or without one of these.

Errors: `UsageError` (exit status 2) is input the user can fix, `RunFailure` (exit status 1) is a failure while
running; both print as one line `<prog>: error: <what> (<flag>): <how to fix>` and never a traceback, unless
`--debug` or HF_DDPM_DEBUG=1 is given.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import MISSING
from typing import Any, Callable, Literal, Sequence

from transformers import HfArgumentParser

DEBUG_ENV = "HF_DDPM_DEBUG"
ARGPARSE_KEYS = ("help", "choices", "metavar", "aliases")  # the metadata keys HfArgumentParser passes to argparse


# ------------------------------------------------------------------------------------------------- errors
class UsageError(ValueError):
    """Input the user can fix: what is wrong, with which option, and how to fix it; exit status 2."""

    exit_code = 2

    def __init__(self, what: str, option: str | None = None, fix: str | None = None):
        self.what, self.option, self.fix = what, option, fix
        super().__init__(format_error(what, option, fix))


class RunFailure(RuntimeError):
    """A failure while running (disk, network, a damaged file found late); exit status 1, same one-line form."""

    exit_code = 1

    def __init__(self, what: str, option: str | None = None, fix: str | None = None):
        self.what, self.option, self.fix = what, option, fix
        super().__init__(format_error(what, option, fix))


def format_error(what: str, option: str | None = None, fix: str | None = None) -> str:
    text = what.rstrip(". ")
    if option:
        text += f" ({option})"
    if fix:
        text += f": {fix.rstrip('.')}"
    return " ".join(text.split())


def flag(name: str) -> str:
    """The command-line spelling of a field name."""
    return f"--{name}"


# Errors a user fixes by changing the command line (exit 2); every other exception is a runtime failure (exit 1).
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_guarded(main: Callable[[], int | None], prog: str, debug: bool = False) -> int:
    """Run `main` under the one error policy: one line on stderr and exit 2 (usage) or 1 (runtime), no traceback."""
    if debug:
        return main() or 0
    try:
        return main() or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`): nothing to report. Point stdout at /dev/null so that
        # the interpreter's own flush at exit does not fail again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except BaseException as error:  # noqa: BLE001 - the policy: every failure is one line
        if isinstance(error, SystemExit):
            raise
        code = 2 if isinstance(error, USAGE_ERRORS) and not isinstance(error, RunFailure) else 1
        message = " ".join(str(error).split()) or type(error).__name__
        if code == 1 and not isinstance(error, (RunFailure, OSError)):
            message = f"{type(error).__name__}: {message} (rerun with --debug for the traceback)"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code


def run_config(build_parser: Callable[[], "OptionParser"], run: Callable[[Any], None], prog: str,
               argv: Sequence[str] | None = None) -> int:
    """An entry point whose options are one declared config: parse and check every option, then `run(config)`,
    all under run_guarded (bad input is one line and exit status 2 before any work)."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def command() -> None:
        (config,) = build_parser().parse_config(argv)
        run(config)

    return run_guarded(command, prog, debug=debug_requested(argv))


# ------------------------------------------------------------------------------------------------ ranges
_RANGE_RE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([\])])\s*$")


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval such as "[1, inf)" or "(0, 1]": the numbers an option accepts."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> "Range":
        match = _RANGE_RE.match(text)
        if not match:
            raise ValueError(f"range {text!r} is not an interval like '[1, inf)'")
        left, low, high, right = match.groups()
        return cls(float(low), float(high), left == "[", right == "]")

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def show(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"

        return f"{'[' if self.low_closed else '('}{show(self.low)}, {show(self.high)}{']' if self.high_closed else ')'}"

    def describe(self) -> str:
        parts = []
        if self.low != -math.inf:
            parts.append(f"{'>=' if self.low_closed else '>'} {self.low:g}")
        if self.high != math.inf:
            parts.append(f"{'<=' if self.high_closed else '<'} {self.high:g}")
        return " and ".join(parts) or "any number"


# ------------------------------------------------------------------------------------------ declarations
SWITCH = "a switch: on or off"  # free= of a boolean flag: both values are fine


def output_file(value: str) -> None:
    """A `check=` for a file an entry point writes at the end: refused up front if it could not be written then."""
    folder = os.path.dirname(os.path.abspath(value))
    if os.path.isdir(value):
        raise ValueError("is a folder; pass a file path in it")
    if not os.path.isdir(folder):
        raise ValueError(f"its folder {folder} does not exist; create it or pass a path in an existing folder")


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    range: str | None = None,
    check: Callable[[Any], None] | None = None,
    free: str | None = None,
    excludes: Sequence[str] = (),
    group: str | None = None,
    positional: bool = False,
    metavar: str | None = None,
    aliases: Sequence[str] = (),
    default_factory: Callable[[], Any] | None = None,
    convert: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field that declares one option.

    `choices`, `range` (an interval such as "[1, inf)"), `check` (a callable that raises ValueError with what is
    wrong and how to fix it) and `free` (why any value is accepted, or where it is checked) are the validator
    decision; `excludes` names options that cannot be set together with this one; `group` is the heading the
    option is listed under in `--help` (data, model, diffusion, optimization, outputs, Hub...); `convert` turns the
    command line's text into the value where the field's type alone cannot (e.g. "all" -> None).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "range": Range.parse(range) if range else None, "check": check, "free": free,
                "excludes": tuple(excludes), "group": group, "positional": positional, "metavar": metavar,
                "aliases": list(aliases), "convert": convert}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(config_or_class) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_or_class) if f.init]


def _hint(config_class, name: str):
    return typing.get_type_hints(config_class)[name]


def _base_types(hint) -> tuple[tuple, bool]:
    """(accepted Python types, whether None is accepted) of a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        kinds = tuple(a for a in args if a is not type(None))
        return tuple(t for k in kinds for t in _base_types(k)[0]), type(None) in args
    if origin is Literal:
        return tuple({type(a) for a in typing.get_args(hint)}), False
    if origin in (list, tuple):
        return (list, tuple), False
    return (hint,), hint is type(None)


def _type_ok(value, kinds: tuple) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def is_set(config, name: str) -> bool:
    """Whether an option differs from its declared default (what `excludes` compares)."""
    field = next(f for f in declared(config) if f.name == name)
    default = field.default if field.default is not MISSING else None
    value = getattr(config, name)
    if value is None or value is False or value is default:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple)):  # values compared by equality; objects are set
        return value != default
    return True


def check_options(config) -> None:
    """Check every field of a config against its declaration: type, choices, range, check, exclusions."""
    for field in declared(config):
        name, meta, value = field.name, field.metadata, getattr(config, field.name)
        kinds, nullable = _base_types(_hint(type(config), name))
        if value is None:
            if nullable or field.default is None:
                continue
            raise UsageError("a value is needed", flag(name), f"set it, e.g. {flag(name)} {field.default!r}")
        if not _type_ok(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise UsageError(f"{value!r} is not a {expected}", flag(name),
                             f"pass a {expected}")
        items = value if isinstance(value, (list, tuple)) else [value]  # a list option: each of its values
        for item in items:
            if meta.get("choices") and item not in meta["choices"]:
                raise UsageError(f"{item!r} is not a valid choice", flag(name),
                                 f"use one of: {', '.join(map(str, meta['choices']))}")
            if meta.get("range") is not None and item not in meta["range"]:
                raise UsageError(f"{item!r} is not {meta['range'].describe()}", flag(name),
                                 f"pass a value in {meta['range']}")
        if meta.get("check") is not None:
            try:
                meta["check"](value)
            except UsageError:
                raise
            except ValueError as error:
                raise UsageError(f"{value!r}: {error}", flag(name)) from None
    for field in declared(config):
        for other in field.metadata.get("excludes", ()):
            if is_set(config, field.name) and is_set(config, other):
                raise UsageError(f"{flag(field.name)} and {flag(other)} cannot be used together",
                                 f"{flag(field.name)}, {flag(other)}", "drop one of them")


def configure(config_class, config=None, /, **options):
    """A checked instance of `config_class` for a Python call: `config` itself when it is one, else one built from
    keyword `options` (the declared defaults for the rest), where a first argument that is not a config fills the
    class's first positional field (so `evaluate(pipeline, metrics="bpd")` works)."""
    if not isinstance(config, config_class):
        if config is not None:
            first = next((f.name for f in declared(config_class) if f.metadata.get("positional")), None)
            if first is None:
                raise TypeError(f"{config_class.__name__} takes keyword options only, got {config!r}.")
            options = {first: config, **options}
        config = config_class(**options)
    elif options:
        raise TypeError(f"pass a {config_class.__name__} or keyword options, not both (got {sorted(options)}).")
    check_options(config)
    if hasattr(config, "validate"):
        config.validate()
    return config


def check_device(name) -> None:
    """A torch device that exists on this machine ("cpu", "cuda", "cuda:1", "mps", ...); None means the default."""
    import torch

    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError("not a torch device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        raise ValueError(f"no {device.type} device on this machine: use cpu, or leave it out for the default")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"there is no {device} here ({count} {device.type} device(s)): use {device.type}:0 to "
                         f"{device.type}:{count - 1}")


# ---------------------------------------------------------------------------------------------- the parser
class OneLineHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, with "(default: None)" left out where None just means "not set"."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or action.help is None:
            return action.help
        return super()._get_help_string(action)


class DocstringHelpFormatter(argparse.RawDescriptionHelpFormatter, OneLineHelpFormatter):
    """The description as written (a script's docstring, its example commands intact); options with defaults."""


class OptionParser(HfArgumentParser):
    """HfArgumentParser that reads `option(...)` declarations, prints errors as one line and knows renamed flags.

    `renamed` maps a flag other tools use (e.g. diffusers' `--num_epochs`) to a sentence saying what to use here.
    """

    def __init__(self, dataclass_types=None, *, renamed: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("formatter_class", OneLineHelpFormatter)
        self.renamed = renamed or {}
        super().__init__(dataclass_types or [], **kwargs)
        if not any("--debug" in a.option_strings for a in self._actions):
            self.add_argument("--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)")

    def _add_dataclass_arguments(self, dtype) -> None:
        groups: dict[str, argparse._ArgumentGroup] = {}
        hints = typing.get_type_hints(dtype)
        for field in declared(dtype):
            field = copy.copy(field)  # HfArgumentParser rewrites field.type: keep the class's own fields intact
            field.type = hints[field.name]
            name = field.metadata.get("group")
            target = self if name is None else groups.setdefault(name, self.add_argument_group(name))
            self._parse_dataclass_field(target, field)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        meta = field.metadata
        help_text = meta.get("help") or ""
        if meta.get("range") is not None:
            help_text = f"{help_text.rstrip('.')}; range {meta['range']}"
        if meta.get("positional"):
            parser.add_argument(field.name, help=help_text, metavar=meta.get("metavar") or field.name.upper(),
                                nargs=None if field.default is MISSING else "?",
                                default=None if field.default is MISSING else field.default,
                                type=_positional_type(field.type))
            return
        kept = {key: meta[key] for key in ARGPARSE_KEYS if meta.get(key)}
        kept["help"] = help_text
        if "choices" in kept:
            kept["choices"] = list(kept["choices"])
        field.metadata = types.MappingProxyType(kept)
        kinds, nullable = _base_types(field.type)
        if kinds == (bool,) and not nullable:
            # --flag / --no-flag taking no value (HfArgumentParser's optional value would swallow a positional
            # argument that follows, as in `push --private DIR`); --no_flag is kept as HfArgumentParser spells it
            parser.add_argument(flag(field.name), *kept.get("aliases", ()), action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
            dashed = field.name.replace("_", "-")  # the other spellings work, unlisted, to keep --help readable
            hidden = {f"--no_{field.name}": "store_false"}
            if dashed != field.name:
                hidden.update({f"--{dashed}": "store_true", f"--no-{dashed}": "store_false"})
            for spelling, action in hidden.items():
                parser.add_argument(spelling, dest=field.name, action=action, help=argparse.SUPPRESS)
            return
        if str in kinds and len(kinds) > 1:  # e.g. `str | os.PathLike | None`: text on the command line, the other
            field.type = typing.Optional[str] if nullable else str  # types are values from Python
        HfArgumentParser._parse_dataclass_field(parser, field)
        if meta.get("convert") is not None:
            parser._option_string_actions[flag(field.name)].type = meta["convert"]

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(message.split())}: see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)

    def unknown_option(self, arg: str) -> str:
        name = arg.split("=")[0]
        if name in self.renamed:
            return f"unknown option {name}: {self.renamed[name]}"
        return f"unrecognized argument {arg!r}"

    def parse_config(self, argv: Sequence[str] | None = None, defaults: dict | None = None) -> tuple:
        """Flags over `defaults` (e.g. a YAML preset) over the declared defaults; every instance checked."""
        if defaults:
            self.set_defaults(**defaults)
        namespace, unknown = self.parse_known_args(argv)
        if unknown:
            self.error(self.unknown_option(unknown[0]))
        return self.build(vars(namespace))

    def build(self, values: dict) -> tuple:
        outputs = []
        for config_class in self.dataclass_types:
            names = {f.name for f in declared(config_class)}
            config = config_class(**{k: v for k, v in values.items() if k in names})
            check_options(config)
            if hasattr(config, "validate"):
                config.validate()
            outputs.append(config)
        return tuple(outputs)


def _positional_type(hint):
    kinds, _ = _base_types(hint)
    kind = kinds[0] if kinds else str
    return kind if kind in (int, float) else str


def walk_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """Every parser under `parser` (itself and subcommands, recursively), as (command name, parser)."""
    yield prefix or parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, f"{prefix} {name}".strip())
