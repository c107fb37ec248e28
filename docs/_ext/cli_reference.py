"""A Sphinx directive that renders the command line's reference from ``scorefast.cli.build_parser()``.

``{cli-reference}`` writes one section per command with its usage and every flag with its own help text,
so the reference is generated at build time and cannot drift from the flags. Help texts are inserted as
plain text (no markup is parsed from them).
"""

from __future__ import annotations

import argparse

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def commands() -> dict[str, str]:
    """{command: its one-line help}, in the order the parser lists them."""
    from scorefast.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help or "" for choice in sub._choices_actions}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one command (its flags are generated only when that command is asked for)."""
    from scorefast.cli import build_parser

    sub = next(a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def flag_entries(parser: argparse.ArgumentParser) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(group title, [(the flag as typed, its help)])] for every group of ``parser`` that has flags."""
    formatter = parser._get_formatter()
    out = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS:
                continue
            names = ", ".join(action.option_strings) or action.dest
            if action.option_strings and action.nargs != 0:
                names += f" {formatter._format_args(action, formatter._get_default_metavar_for_optional(action))}"
            rows.append((names, formatter._expand_help(action) if action.help else ""))
        if rows:
            out.append((group.title or "", rows))
    return out


def render() -> list[nodes.Node]:
    """One section per command: its help, usage, and a definition list of its flags per group."""
    out: list[nodes.Node] = []
    for name, text in commands().items():
        parser = command_parser(name)
        section = nodes.section(ids=[f"cli-{name}"], names=[f"scorefast {name}"])
        section += nodes.title(text=f"scorefast {name}")
        section += nodes.paragraph(text=text[:1].upper() + text[1:] + ".")
        section += nodes.literal_block(text=parser.format_usage().strip())
        for title, rows in flag_entries(parser):
            section += nodes.rubric(text=title)
            listing = nodes.definition_list()
            for names, help_text in rows:
                item = nodes.definition_list_item()
                item += nodes.term("", "", nodes.literal(text=names))
                item += nodes.definition("", nodes.paragraph(text=help_text))
                listing += item
            section += listing
        out.append(section)
    return out


class CliReference(SphinxDirective):
    """``{cli-reference}``: the generated reference of every ``scorefast`` command."""

    def run(self) -> list[nodes.Node]:
        return render()


def setup(app) -> dict:
    app.add_directive("cli-reference", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
