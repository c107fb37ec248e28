"""Training recipes: named sets of defaults for the flags of ``scorefast train``.

A recipe fills in the flags a run was not given (a flag given always wins; a recipe's option of a
plug-in the given flags replace is dropped); a built-in data set may declare defaults of its own over the
recipe's (``data_defaults``). Every flag's own default is scorefast 0.1's, so ``plain``
sets nothing: t uniform on [eps, T], the epsilon weighting, a fixed EMA, a constant learning rate; it
stays the reference in every benchmark. The default recipe lists what it changes, each change chosen
by measurement (docs/recipes.md).
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..choices import DATASETS
from ..registry import Registry


@dataclass(frozen=True)
class Recipe:
    """Defaults for every run (``flags``) and for runs on one kind of data (``by_kind``: 'points', 'image')."""

    name: str
    description: str
    flags: dict = field(default_factory=dict)
    by_kind: dict = field(default_factory=dict)

    def defaults(self, kind: str | None) -> dict:
        return {**self.flags, **self.by_kind.get(kind, {})}


PLAIN = Recipe("plain", "t uniform on [eps, T], epsilon weighting, fixed EMA 0.999, constant learning rate "
               "(scorefast 0.1's training: every flag at its own default)")

FAST = Recipe(
    "fast", "evaluation by DPM-Solver++(2M) in 40 steps on 1,000 samples within 10 % of the run; on 2-D points "
    "learning rate 4e-3 (warm-up 200, then 1/sqrt(step / 500)) and the adaptive time sampler; on images EDM's "
    "preconditioning, ln(sigma) ~ N(-1.2, 1.2^2) and the EDM weighting, batch 256, learning rate 2e-3 (warm-up 100, "
    "then 1/sqrt(step / 400)) and a power EMA of sigma_rel 0.10 (preconditioning and noise levels make each step "
    "count, the smaller batch makes steps cheaper, the decay keeps the late gain; measured by the readme-images-cpu "
    "bench preset); interval edges by time allocation",
    {"sampler": "dpmpp-2m", "eval_steps": 40, "eval_samples": 1000, "eval_budget": 0.1, "partition": "allocation"},
    {"points": {"lr": 4e-3, "warmup": 200, "lr_schedule": "rsqrt", "lr_ref_steps": 500,
                "time_sampler": "adaptive"},
     "image": {"param": "edm", "time_sampler": "lognormal", "weighting": "edm", "batch_size": 256, "lr": 2e-3,
               "warmup": 100, "lr_schedule": "rsqrt", "lr_ref_steps": 400, "ema_profile": "power",
               "ema_std": 0.10}})

EDM = Recipe(
    "edm", "EDM's published training (Karras et al. 2022, CIFAR-10) at this scale: preconditioning --param edm, "
    "ln(sigma) ~ N(-1.2, 1.2^2), the EDM weighting, Adam lr 1e-3 (betas 0.9, 0.999) with a warm-up over 5 % of "
    "2,000 steps and no clipping, EDM's EMA (half-life 5 % of the images seen, which is a power EMA of sigma_rel "
    "0.063), Heun's sampler in 35 evaluations; on images sigma_data 0.5 and dropout 0.13",
    {"param": "edm", "time_sampler": "lognormal", "p_mean": -1.2, "p_std": 1.2, "weighting": "edm",
     "ema_profile": "power", "ema_std": 0.063, "lr": 1e-3, "warmup": 100, "grad_clip": 0.0, "adam_beta2": 0.999,
     "sampler": "heun", "eval_steps": 17},
    {"image": {"sigma_data": 0.5, "dropout": 0.13}})

RUN_SIZE = ("steps", "batch_size", "time_budget")
"""The flags that size a run: any of them given drops a data set's own run as a whole."""


def data_defaults(spec: str, given: dict) -> dict:
    """A built-in data set's own run (its ``run`` tag in ``choices.DATASETS``: a size that fits a few minutes on a
    CPU, with the evaluation that suits it) for the flags not ``given``; nothing when any of ``RUN_SIZE`` is given,
    so that a run of the user's own size trains at the recipe's batch."""
    if spec not in DATASETS or any(flag in given for flag in RUN_SIZE):
        return {}
    return {k: v for k, v in (DATASETS.tag(spec, "run") or {}).items() if k not in given}


RECIPES = Registry("recipe", flag="recipe", title="training recipe", default="fast")
for _recipe in (PLAIN, FAST, EDM):
    RECIPES.add(_recipe.name, _recipe, _recipe.description)
DEFAULT_RECIPE: str = RECIPES.default

__all__ = ["DEFAULT_RECIPE", "EDM", "FAST", "PLAIN", "RECIPES", "RUN_SIZE", "Recipe", "data_defaults"]
