"""Plug-in registries and configuration fields: one registry per slot, each name written beside its class.

A plug-in is a dataclass whose fields are its options; ``@REGISTRY.register("name")`` records it under
that name (score_sde's ``@register_predictor`` is the model), so no list of names is kept by hand
anywhere else. Every configuration field - a section's or a plug-in's - is declared with
:func:`option`, which keeps its help text, its command-line flag and whether a resumed run may change
it next to the field itself; the command line and the config files are generated from that metadata.

This module imports nothing heavy: building the command line must not import torch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from .errors import UserError

T = TypeVar("T")


def option(default: Any, help: str, *, flag: str | None = None, locked: bool = True, selects: bool = False,
           choices: tuple[str, ...] | None = None) -> Any:
    """A configuration field: ``default``, ``help`` (shown by ``--help``), the flag name if it differs
    from the field name (underscores; ``--`` and dashes are added by the CLI), ``locked`` if a resumed
    run may not change it, ``selects`` if giving the flag selects the plug-in that owns it (a partition's
    --intervals), and the fixed ``choices`` of a string field that has no registry."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "locked": locked,
                                                        "selects": selects, "choices": choices})


def options_of(cls_or_obj) -> list[dataclasses.Field]:
    """The fields of a dataclass declared with :func:`option` (its configurable options; other fields are
    values bound at run time, such as a statistic of the data)."""
    return [f for f in dataclasses.fields(cls_or_obj) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    """The flag name (with underscores) of a field declared by :func:`option`."""
    return f.metadata.get("flag") or f.name


def field_type(owner: type, f: dataclasses.Field) -> type:
    """The concrete value type of a field (int, float, str, bool or tuple), with ``X | None`` unwrapped."""
    hint = typing.get_type_hints(owner)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def optional(owner: type, f: dataclasses.Field) -> bool:
    """Whether ``None`` is a valid value of the field."""
    hint = typing.get_type_hints(owner)[f.name]
    return type(None) in typing.get_args(hint)


def coerce(owner: type, f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` (from a flag's text, a JSON or a TOML file) as the field's type; one clear error otherwise."""
    flag = "--" + flag_of(f).replace("_", "-")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional(owner, f)):
        if optional(owner, f):
            return None
        raise UserError(f"{where}: {flag} cannot be empty")
    kind = field_type(owner, f)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value) if not isinstance(value, str) else int(value, 10)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items if str(v).strip() != "")
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    name = {tuple: "comma-separated integers"}.get(kind, getattr(kind, "__name__", str(kind)))
    raise UserError(f"{where}: {flag} expects {name}, got {value!r}")


class Registry:
    """Named plug-ins of one slot (a training target, a prior at T, a partition of time, ...).

    ``flag`` is the command-line flag that selects the plug-in (None if the selection is implied by
    the options given, as for partitions).
    """

    def __init__(self, slot: str, flag: str | None = None):
        self.slot, self.flag = slot, flag
        self._items: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: record a dataclass plug-in under ``name`` (also set as ``cls.name``)."""
        def decorate(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ValueError(f"{self.slot} '{name}' is registered twice")
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{self.slot} '{name}': a plug-in must be a dataclass (its fields are its options)")
            cls.name = name
            self._items[name] = cls
            return cls
        return decorate

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> type:
        if name not in self._items:
            what = f"--{self.flag.replace('_', '-')}" if self.flag else self.slot
            raise UserError(f"unknown {what} {name!r}; choose one of {', '.join(self._items)}")
        return self._items[name]

    def create(self, name: str, **options: Any) -> Any:
        """An instance of plug-in ``name`` with ``options`` (field names); unknown options are an error."""
        cls = self.get(name)
        known = {f.name: f for f in options_of(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(f"{self.slot} '{name}' has no option(s) {', '.join(unknown)}")
        where = f"{self.slot} '{name}'"
        return cls(**{k: coerce(cls, known[k], v, where) for k, v in options.items()})

    def option_owners(self) -> dict[str, list[tuple[type, dataclasses.Field]]]:
        """flag name -> [(plug-in class, field)] for every option of every plug-in of this slot."""
        owners: dict[str, list[tuple[type, dataclasses.Field]]] = {}
        for cls in self._items.values():
            for f in options_of(cls):
                owners.setdefault(flag_of(f), []).append((cls, f))
        return owners


class Plugin:
    """Base of every plug-in: a dataclass of options with a registered ``name``."""

    name: ClassVar[str] = "plugin"

    def to_dict(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in options_of(self)}}

    def validate(self) -> None:
        """Raise UserError (one line) for an option out of range; called before anything is written."""


__all__ = ["Plugin", "Registry", "coerce", "field_type", "flag_of", "option", "optional", "options_of"]
