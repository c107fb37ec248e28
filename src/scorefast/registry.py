"""Registries of named choices and configuration fields: every name written beside what it names, with its help.

A :class:`Registry` holds the names of one kind of choice (a training target, a sampler, a data set,
a recipe, ...) with a help text each, the registry's own ``title`` and ``default``. A plug-in is a
dataclass whose fields are its options; ``@REGISTRY.register("name")`` records it under that name
(score_sde's ``@register_predictor`` is the model). A name whose implementation needs torch is
declared with its help in a torch-free module (``choices``) and registered by the module that
implements it, which the registry imports on first use; so no list of names is kept by hand anywhere
else, and the command line lists every name without importing torch. Every configuration field - a
section's or a plug-in's - is declared with :func:`option`, which keeps its help text, its
command-line flag, whether a resumed run may change it and the values it accepts next to the field
itself; the command line, the config files and the one check of a value (:func:`check`) are generated
from that metadata.

This module imports nothing heavy: building the command line must not import torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import operator
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from .errors import UserError

T = TypeVar("T")
ITEMS = {int: "integers", float: "numbers", str: "names"}  # how an error names the items of a tuple field


def option(default: Any, help: str, *, flag: str | None = None, locked: bool = True, selects: bool = False,
           choices: Registry | tuple[str, ...] | None = None, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, metavar: str | None = None) -> Any:
    """A configuration field: ``default``, ``help`` (shown by ``--help``), the flag name if it differs
    from the field name (underscores; ``--`` and dashes are added by the CLI), the ``metavar`` of its value in
    ``--help`` if not the flag's name in capitals, ``locked`` if a resumed
    run may not change it, ``selects`` if giving the flag selects the plug-in that owns it (a partition's
    --intervals), and the values it accepts: ``choices`` (a registry, whose names and help the flag's
    help lists, or a tuple of names), the inclusive bounds ``min`` / ``max`` and the exclusive ``above`` /
    ``below``. :func:`check` enforces them; None passes."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "locked": locked,
                                                        "selects": selects, "choices": choices, "min": min,
                                                        "max": max, "above": above, "below": below,
                                                        "metavar": metavar})


def options_of(cls_or_obj) -> list[dataclasses.Field]:
    """The fields of a dataclass declared with :func:`option` (its configurable options; other fields are
    values bound at run time, such as a statistic of the data)."""
    return [f for f in dataclasses.fields(cls_or_obj) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    """The flag name (with underscores) of a field declared by :func:`option`."""
    return f.metadata.get("flag") or f.name


def _hint(owner: type, f: dataclasses.Field) -> Any:
    """The type annotation of a field, with ``X | None`` unwrapped."""
    hint = typing.get_type_hints(owner)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def field_type(owner: type, f: dataclasses.Field) -> type:
    """The concrete value type of a field (int, float, str, bool, tuple or list), with ``X | None`` unwrapped."""
    hint = _hint(owner, f)
    return typing.get_origin(hint) or hint


def item_type(owner: type, f: dataclasses.Field) -> type:
    """The type of the items of a tuple or list field (``tuple[float, ...]``: float; int when not said)."""
    return next(iter(typing.get_args(_hint(owner, f))), int)


def optional(owner: type, f: dataclasses.Field) -> bool:
    """Whether ``None`` is a valid value of the field."""
    hint = typing.get_type_hints(owner)[f.name]
    return type(None) in typing.get_args(hint)


def coerce(owner: type, f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` (from a flag's text, a JSON or a TOML file) as the field's type, checked by :func:`check`; one
    clear error otherwise."""
    return check(f, _as_type(owner, f, value, where), where)


def _as_type(owner: type, f: dataclasses.Field, value: Any, where: str) -> Any:
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
        if kind is tuple:  # comma-separated text, or a list
            item = item_type(owner, f)
            items = value.split(",") if isinstance(value, str) else list(value)
            if item is str and not all(isinstance(v, str) for v in items):
                raise TypeError
            return tuple(item(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip() != "")
        if kind is list:  # a repeatable flag: each value given, as it is
            items = [value] if isinstance(value, str) else list(value)
            if not all(isinstance(v, str) for v in items):
                raise TypeError
            return items
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    name = f"comma-separated {ITEMS.get(item_type(owner, f), 'values')}" if kind is tuple else \
        "strings" if kind is list else getattr(kind, "__name__", str(kind))
    raise UserError(f"{where}: {flag} expects {name}, got {value!r}")


def check(f: dataclasses.Field, value: Any, where: str | None = None) -> Any:
    """``value`` if the field accepts it (a finite number within its bounds, one of its choices), else one
    UserError naming the flag; the one place these rules are enforced (values read and the configuration
    validated)."""
    flag = "--" + flag_of(f).replace("_", "-")
    m = f.metadata
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, tuple):  # each item held to the field's rule
        for item in value:
            check(f, item, where)
        return value

    def refuse(what: str) -> typing.NoReturn:
        raise UserError(f"{where + ': ' if where else ''}{flag} {what}, got {value!r}")

    if isinstance(value, float) and not math.isfinite(value):
        refuse("must be a finite number")
    if isinstance(value, (int, float)):
        for key, holds, text in (("min", operator.ge, ">="), ("max", operator.le, "<="), ("above", operator.gt, ">"),
                                 ("below", operator.lt, "<")):
            if m.get(key) is not None and not holds(value, m[key]):
                refuse(f"must be {text} {m[key]}")
    choices = m.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        raise UserError(f"{where + ': ' if where else ''}unknown {flag} {value!r}; choose one of "
                        f"{', '.join(choices)}")
    return value


def help_of(f: dataclasses.Field) -> str:
    """The help text of a field, with the names (and their help) of the registry its ``choices`` come from."""
    choices = f.metadata.get("choices")
    text = f.metadata["help"]
    return f"{text}: {choices.listing()}" if isinstance(choices, Registry) else text


class Registry:
    """The names of one kind of choice, each with what it names and a help text.

    ``slot`` says what a name is ("sampler", "target"), ``flag`` is the command-line flag that selects
    one (None if the selection is implied by the options given, as for partitions), ``title`` the
    heading of its listings and ``default`` the name chosen when none is given. ``module``, if given,
    implements the names declared here (:meth:`declare`) and is imported when one is first asked for.
    Read like a mapping: ``name in REG``, ``REG[name]``, ``list(REG)``, ``REG.items()``.
    """

    def __init__(self, slot: str, flag: str | None = None, *, title: str | None = None, default: str | None = None,
                 module: str | None = None):
        self.slot, self.flag, self.default, self.module = slot, flag, default, module
        self.title = title or slot
        self._items: dict[str, Any] = {}
        self._help: dict[str, str] = {}
        self._tags: dict[str, dict[str, Any]] = {}

    def declare(self, name: str, help: str, **tags: Any) -> None:
        """Record ``name`` with its help (and ``tags`` such as a data set's kind) before its implementation is
        registered, so that it can be listed without importing ``module``."""
        if name in self._help:
            raise ValueError(f"{self.slot} '{name}' is declared twice")
        self._help[name], self._tags[name] = help, tags
        self._items.setdefault(name, None)

    def add(self, name: str, obj: Any, help: str | None = None, **tags: Any) -> Any:
        """Record ``obj`` under ``name``: a name this registry declared, or a new one with its ``help`` (default:
        the first paragraph of ``obj``'s docstring)."""
        if self._items.get(name) is not None:
            raise ValueError(f"{self.slot} '{name}' is registered twice")
        if name not in self._help:
            if self.module is not None:
                raise ValueError(f"{self.slot} '{name}' is not declared beside the others")
            self._help[name], self._tags[name] = help or _summary(obj), tags
        self._items[name] = obj
        return obj

    def register(self, name: str, help: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: record a dataclass plug-in under ``name`` (also set as ``cls.name``)."""
        def decorate(cls: type[T]) -> type[T]:
            if self._items.get(name) is not None:
                raise ValueError(f"{self.slot} '{name}' is registered twice")
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{self.slot} '{name}': a plug-in must be a dataclass (its fields are its options)")
            cls.name = name
            return self.add(name, cls, help)
        return decorate

    def names(self, **tags: Any) -> list[str]:
        """Every name, in the order registered; with ``tags``, those whose tags have these values."""
        return [n for n in self._items if all(self._tags[n].get(k) == v for k, v in tags.items())]

    def help(self, name: str) -> str:
        """What ``name`` is (read without importing the implementing module)."""
        self._known(name)
        return self._help[name]

    def tag(self, name: str, key: str) -> Any:
        """A tag ``name`` was declared with (None if it has none)."""
        self._known(name)
        return self._tags[name].get(key)

    def _known(self, name: str) -> None:
        if name not in self._items:
            what = f"--{self.flag.replace('_', '-')}" if self.flag else self.slot
            raise UserError(f"unknown {what} {name!r}; choose one of {', '.join(self._items)}")

    def listing(self, with_help: bool = True) -> str:
        """Every name for a flag's help text, with its help: 'a (what a is), b (what b is)', or without."""
        return ", ".join(f"{n} ({h})" if h and with_help else n for n, h in self._help.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> Any:
        """What ``name`` names (its module imported if need be); one UserError listing the names otherwise."""
        self._known(name)
        if self._items[name] is None and self.module is not None:
            importlib.import_module(self.module)
        return self._items[name]

    __getitem__ = get

    def items(self) -> list[tuple[str, Any]]:
        return [(n, self.get(n)) for n in self._items]

    def values(self) -> list[Any]:
        return [self.get(n) for n in self._items]

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
        for cls in self.values():
            for f in options_of(cls):
                owners.setdefault(flag_of(f), []).append((cls, f))
        return owners


def _summary(obj: Any) -> str:
    """The first paragraph of an object's own docstring (a dataclass's generated signature is none)."""
    doc = getattr(obj, "__dict__", {}).get("__doc__") or ""
    if doc.startswith(f"{getattr(obj, '__name__', '')}("):
        return ""
    return " ".join(doc.strip().split("\n\n")[0].replace("``", "").split())


class Plugin:
    """Base of every plug-in: a dataclass of options with a registered ``name``."""

    name: ClassVar[str] = "plugin"

    def to_dict(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in options_of(self)}}

    def validate(self) -> None:
        """Raise UserError (one line) for an option out of range; called before anything is written."""


__all__ = ["Plugin", "Registry", "check", "coerce", "field_type", "flag_of", "help_of", "item_type", "option",
           "optional", "options_of"]
