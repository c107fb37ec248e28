"""Training recipes: named sets of defaults for the flags of ``scorefast train``.

A recipe fills in the flags a run was not given (a flag given always wins; a recipe's option of a
plug-in the given flags replace is dropped). Every flag's own default is scorefast 0.1's, so ``plain``
sets nothing: t uniform on [eps, T], the epsilon weighting, a fixed EMA, a constant learning rate; it
stays the reference in every benchmark. The default recipe lists what it changes, each change chosen
by measurement (README, "The training recipe").
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    flags: dict = field(default_factory=dict)


PLAIN = Recipe("plain", "t uniform on [eps, T], epsilon weighting, fixed EMA 0.999, constant learning rate "
               "(scorefast 0.1's training: every flag at its own default)")

RECIPES: dict[str, Recipe] = {r.name: r for r in (PLAIN,)}
DEFAULT_RECIPE = "plain"

__all__ = ["DEFAULT_RECIPE", "PLAIN", "RECIPES", "Recipe"]
