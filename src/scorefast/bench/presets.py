"""Named studies: ``scorefast bench --preset NAME`` (flags given beside it override the preset's).

Each entry is written beside its name; ``quick`` is also what ``--quick`` runs when no preset is named.
The README's tables come from the ``readme-*`` presets (their protocol is the bench's: one evaluator,
plain DSM's final NLL as the target, every method beside its controls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


@dataclass(frozen=True)
class Preset:
    """A study's defaults: data sets, --methods, budget, seeds and the other bench flags."""

    name: str
    description: str
    data: tuple[str, ...]
    methods: str
    budget: str
    seeds: int
    quick: bool = False
    n_data: tuple[int | None, ...] = (None,)
    T: tuple[float, ...] = (0.4,)
    workers: int = 1
    threads: int | None = None
    snapshot_every: int | None = None
    settings: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def preset(p: Preset) -> Preset:
    """Register a preset under its name."""
    if p.name in PRESETS:
        raise ValueError(f"preset '{p.name}' is registered twice")
    PRESETS[p.name] = p
    return p


preset(Preset("quick", "every method and control once, tiny sizes and budgets, on a 2-D set and 8x8 digits: a "
              "smoke test of the whole bench (minutes on 2 CPU cores; its numbers mean little)",
              data=("checkerboard", "digits"), methods="all", budget="200steps", seeds=1, quick=True, threads=1))

preset(Preset("readme-recipe", "plain DSM against the default recipe on three 2-D sets and 8x8 digits (the "
              "README's training-recipe table)", data=("checkerboard", "8gaussians", "sharpbroad", "digits"), methods="baselines",
              budget="4000steps", seeds=3, threads=1, snapshot_every=500))

preset(Preset("readme-targets", "the score targets against DSM at 2x and 4x batch and fp-embed without its "
              "embedding (the README's score-embedding and score-target tables)",
              data=("moons", "checkerboard", "8gaussians", "digits"), methods="targets", budget="1500steps", seeds=3,
              threads=1, snapshot_every=150))

preset(Preset("readme-truncation", "shorter diffusion times with each prior against T = 1 with fewer large-t draws "
              "and with the likelihood time sampler (the README's truncation tables)",
              data=("offcentre", "digits"), methods="truncation", budget="2000steps", seeds=3, T=(0.2, 0.4),
              threads=1, snapshot_every=250))

preset(Preset("readme-parallel", "two interval networks side by side on 2 workers against one network with their "
              "time allocation and samples per step on the same workers (the README's parallel table)",
              data=("checkerboard", "8gaussians", "digits"), methods="intervals", budget="2000steps", seeds=3,
              workers=2, threads=1, snapshot_every=250, settings={"sde": "vp-psm"}))

preset(Preset("data-efficiency", "the score targets and plain DSM at 500, 2,000 and 10,000 training points of a "
              "2-D set (the data-efficiency curve; batch 64, so that the 4x-batch control fits into 400 training "
              "points)",
              data=("checkerboard",), methods="targets", budget="2000steps", seeds=2, n_data=(500, 2000, 10000),
              threads=1, settings={"batch_size": 64}))

preset(Preset("full", "every method and control on two 2-D sets and 8x8 digits, 2 seeds", data=("checkerboard",
              "8gaussians", "digits"), methods="all", budget="2000steps", seeds=2, threads=1))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown --preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "Preset", "get_preset", "preset"]
