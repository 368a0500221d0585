"""Boolean flags the way both click and Go's flag package take them.

The upstream Go axon (and every seed script written for it) passes booleans as
``--validate=false``; click only knows ``--validate`` / ``--no-validate`` and refuses the
first ("does not take a value"). :class:`GoFlagsCommand` accepts both: before click parses,
``--flag=VALUE`` of a boolean flag becomes ``--flag`` or ``--no-flag``. VALUE is what Go's
``strconv.ParseBool`` takes (``1 t T TRUE true True 0 f F FALSE false False``), plus
``yes``/``no``/``on``/``off`` in any case; anything else is a usage error (exit 2) naming the
flag. As in Go, a boolean never takes its value as the next argument (``--validate false``
is the flag, then a positional ``false``).

:class:`BoolOption` shows this in ``--help``: ``--validate[=BOOL] / --no-validate`` and
whether the flag is on by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

TRUE_WORDS = frozenset({"1", "t", "true", "y", "yes", "on"})
FALSE_WORDS = frozenset({"0", "f", "false", "n", "no", "off"})


def parse_bool(text: str) -> bool | None:
    """True/False for the words above (case-insensitive), None for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


class BoolOption(click.Option):
    """A boolean flag whose help says it takes ``=BOOL`` and what it defaults to."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None or not self.is_bool_flag:
            return record
        names, text = record
        first = next((o for o in self.opts if o.startswith("--")), self.opts[0])
        names = names.replace(first, f"{first}[=BOOL]", 1)
        on = bool(self.default) if not callable(self.default) else False
        state = "on" if on else "off"
        return names, f"{text} [default: {state}]".strip()


def rewrite_bool_flags(command: click.Command, args: Sequence[str]) -> list[str]:
    """``args`` with every ``--flag=VALUE`` of ``command``'s boolean flags made click's
    ``--flag`` / ``--no-flag`` (or dropped: ``--dry-run=false``); UsageError (exit 2) for a
    VALUE that is not a boolean. Nothing after ``--`` is touched."""
    flags: dict[str, tuple[click.Option, bool]] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.is_flag and param.is_bool_flag:
            for name in param.opts:
                flags[name] = (param, True)
            for name in param.secondary_opts:
                flags[name] = (param, False)
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if not eq or name not in flags or not name.startswith("--"):
            out.append(arg)
            continue
        option, positive = flags[name]
        wanted = parse_bool(value)
        if wanted is None:
            raise click.BadOptionUsage(
                name,
                f"{name}={value!r}: a boolean flag takes true or false "
                f"(or write {_spelling(option, True)} / {_spelling(option, False)})",
            )
        on = wanted if positive else not wanted
        spelled = _spelling(option, on)
        if spelled:
            out.append(spelled)
    return out


def _spelling(option: click.Option, on: bool) -> str:
    """How ``option`` is set to ``on`` on click's command line ("" when leaving it out
    does: a plain flag's off is its default)."""
    longs = [o for o in option.opts if o.startswith("--")] or option.opts
    if on:
        return longs[0]
    if option.secondary_opts:
        return option.secondary_opts[0]
    return ""


class GoFlagsCommand(click.Command):
    """A command whose boolean flags also take ``--flag=true|false`` (see the module)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            rewritten = rewrite_bool_flags(self, args)
        except click.BadOptionUsage as exc:  # again with ctx: the usage line is shown
            raise click.BadOptionUsage(exc.option_name, exc.message, ctx=ctx) from None
        return super().parse_args(ctx, rewritten)


def bool_flag(
    *decls: str, default: bool = False, **kw: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``click.option`` for a boolean flag shown as taking ``=BOOL`` (:class:`BoolOption`)."""
    return click.option(*decls, cls=BoolOption, default=default, is_flag=True, **kw)


__all__ = ["BoolOption", "GoFlagsCommand", "bool_flag", "parse_bool", "rewrite_bool_flags"]
