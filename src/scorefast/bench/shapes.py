"""The shapes of the JSON files a study folder holds, checked when they are read back.

A study folder outlives the code that wrote it and may be edited or damaged by hand: study.json, a cached
curve or a results.json that parses but holds the wrong shape is a one-line ``UserError`` naming the file
and the first thing wrong, and nothing in the folder is changed. A shape is a type (``int`` accepts no
bool), a tuple of alternatives, ``[shape]`` for a list of them, ``{key: shape}`` for an object holding at
least those keys, or ``{str: shape}`` for an object of any keys whose values have that shape.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import display_path, read_json
from ..errors import UserError

NUMBER = (int, float)
MAYBE_NUMBER = (int, float, type(None))

STUDY = {"data": [str], "budget": str, "variants": {str: {str: {str: object}}}}
POINT = {"step": int, "wall": NUMBER, "nll": MAYBE_NUMBER, "metric": MAYBE_NUMBER}
CURVE = {"points": [POINT], "nll_key": str, "metric_name": str, "networks": int, "T": NUMBER}
REFINED = {str: POINT}  # a curve's narrowed points by step (``bench.bracket``), kept apart from the curve
REFINED_SUFFIX = "-refined.json"  # how a file of narrowed points is named in a study's curves folder
RESULTS = {"command": str, "tables": [{"data": str, "group": str, "rows": [{"variant": str}]}], "rows": [dict]}

NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "an array",
         type(None): "null", object: "anything"}


def problem(value, shape, where: str = "") -> str | None:
    """The first place where ``value`` differs from ``shape``, in words; None when it has the shape."""
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where or 'the file'} is {kind(value)}, expected an array"
        return next((p for i, v in enumerate(value) if (p := problem(v, shape[0], f"{where}[{i}]"))), None)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where or 'the file'} is {kind(value)}, expected an object"
        if list(shape) == [str]:
            return next((p for k, v in value.items()
                         if (p := problem(v, shape[str], f"{where + '.' if where else ''}{k}"))), None)
        for key, inner in shape.items():
            if key not in value:
                return f"{where + '.' if where else ''}{key} is missing"
            found = problem(value[key], inner, f"{where + '.' if where else ''}{key}")
            if found:
                return found
        return None
    allowed = shape if isinstance(shape, tuple) else (shape,)
    if object in allowed or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)):
        return None
    return f"{where or 'the file'} is {kind(value)}, expected {' or '.join(NAMES.get(t, t.__name__) for t in allowed)}"


def kind(value) -> str:
    return "a boolean" if isinstance(value, bool) else NAMES.get(type(value), type(value).__name__)


def saved_curve(file: Path):
    """A file of a study's curves folder, checked: a curve, or a curve's narrowed points (``-refined.json``)."""
    refined = file.name.endswith(REFINED_SUFFIX)
    return checked(read_json(file, "refined curve points" if refined else "cached curve"), REFINED if refined
                   else CURVE, file)


def checked(value, shape, file: Path, remedy: str = "delete it to evaluate the run again"):
    """``value`` if it has ``shape``, else a UserError naming ``file``, what is wrong and ``remedy``."""
    found = problem(value, shape)
    if found:
        raise UserError(f"'{display_path(file)}' is damaged: {found}; nothing in the study folder was changed "
                        f"({remedy})")
    return value


__all__ = ["CURVE", "POINT", "REFINED", "REFINED_SUFFIX", "RESULTS", "STUDY", "checked", "problem", "saved_curve"]
