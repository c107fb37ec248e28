"""Sphinx directives that render reference text from scorefast's own objects at build time, so it cannot drift.

- ``{cli-reference}``: one section per command of ``scorefast.cli.build_parser()`` with its usage and every
  flag with its own help text.
- ``{plugin-table} MODULE.REGISTRY``: the names of one registry (a plug-in slot, the samplers, the data
  sets, ...), what each is (its help: for a plug-in, the first paragraph of its docstring) and, for plug-ins,
  their option flags.
- ``{recipe-table}``: every training recipe of ``config.recipes.RECIPES`` with what it sets.

Texts are inserted as plain text (no markup is parsed from them).
"""

from __future__ import annotations

import argparse
import importlib

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


def table(header: list[str], rows: list[list[str]], widths: list[int]) -> nodes.table:
    """A plain docutils table of text cells (``widths`` in characters); a cell ``"`x`"`` is shown as code."""
    group = nodes.tgroup(cols=len(header))
    group += [nodes.colspec(colwidth=w) for w in widths]

    def row(cells: list[str]) -> nodes.row:
        out = nodes.row()
        for cell in cells:
            inner = nodes.literal(text=cell[1:-1]) if cell.startswith("`") and cell.endswith("`") else \
                nodes.Text(cell)
            out += nodes.entry("", nodes.paragraph("", "", inner))
        return out

    head, body = nodes.thead(), nodes.tbody()
    head += row(header)
    body += [row(cells) for cells in rows]
    group += [head, body]
    return nodes.table("", group)


def plugin_rows(path: str) -> list[list[str]]:
    """[name, what it is, its flags] for every name of the registry at ``path`` (module.NAME); a name that is no
    plug-in class has no flags."""
    import dataclasses

    from scorefast.registry import flag_of, options_of

    module, _, name = path.rpartition(".")
    registry = getattr(importlib.import_module(module), name)

    def flags(obj) -> str:
        if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
            return ""
        return ", ".join(f"--{flag_of(f).replace('_', '-')}" for f in options_of(obj))

    return [[f"`{n}`", registry.help(n), flags(registry.get(n))] for n in registry.names()]


def recipe_rows() -> list[list[str]]:
    """[name, what it is, what it sets, what it sets by kind of data] for every recipe."""
    from scorefast.config.recipes import DEFAULT_RECIPE, RECIPES

    def flags(values: dict) -> str:
        return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())

    return [[f"`{r.name}`", ("The default. " if r.name == DEFAULT_RECIPE else "") + r.description, flags(r.flags),
             "; ".join(f"{kind}: {flags(v)}" for kind, v in r.by_kind.items())] for r in RECIPES.values()]


class CliReference(SphinxDirective):
    """``{cli-reference}``: the generated reference of every ``scorefast`` command."""

    def run(self) -> list[nodes.Node]:
        return render()


class PluginTable(SphinxDirective):
    """``{plugin-table} module.REGISTRY``: the names of one registry."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        rows = plugin_rows(self.arguments[0])
        if not any(row[2] for row in rows):
            return [table(["name", "what it is"], [row[:2] for row in rows], [16, 90])]
        return [table(["name", "what it is", "its options"], rows, [16, 60, 30])]


class RecipeTable(SphinxDirective):
    """``{recipe-table}``: every training recipe with what it sets."""

    def run(self) -> list[nodes.Node]:
        return [table(["recipe", "what it is", "sets", "sets by kind of data"], recipe_rows(), [14, 50, 40, 30])]


def setup(app) -> dict:
    app.add_directive("cli-reference", CliReference)
    app.add_directive("plugin-table", PluginTable)
    app.add_directive("recipe-table", RecipeTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
