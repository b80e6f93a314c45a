"""The `hf-ddpm` subcommands, one module each: a `Command` names its options dataclass and the function it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Command:
    """One subcommand: `config` is a dataclass of `hf_ddpm.options.option` fields, `run(config)` does the work.

    A command with `subcommands` (e.g. `plot`) only groups them; `renamed` maps flags that users know from other
    tools to what to use here.
    """

    name: str
    help: str
    run: Callable[[Any], int | None] | None = None
    config: type | None = None
    description: str | None = None
    subcommands: tuple["Command", ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)
