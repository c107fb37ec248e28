"""The flags of ``scorefast bench``: one dataclass whose fields are declared with ``registry.option``.

The bench's parser is generated from these fields by the helper that generates ``scorefast train``'s, and
every value - a flag's text or a Python value - is read by the one coercion (``registry.coerce``), which
also holds it to the field's declared bounds and choices:

    BenchOptions(data="checkerboard,digits", seeds="2").data   # ('checkerboard', 'digits')

A field left at None was not given: the preset's value, else the study's default, is taken
(``command.make_study``). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import DATASETS, METRICS
from ..config.recipes import RECIPES
from ..registry import coerce, option, options_of
from .presets import PRESETS
from .scenarios import choices_text


@dataclass
class BenchOptions:
    """What ``scorefast bench`` was asked (each field a flag; see its help)."""

    data: tuple[str, ...] | None = option(None, "data sets, separated by commas: paths or built-in names "
                                          f"({DATASETS.listing(with_help=False)})")
    methods: str | None = option(None, f"comma-separated: {choices_text()} (default: all); a method brings its "
                                 "controls, the baselines always run")
    budget: str | None = option(None, "training budget of every network, with its unit: 4000steps or 60s (default: "
                                "2000steps, or the preset's)")
    seeds: int | None = option(None, "seeds 0..S-1 of every variant (default: 3)", min=1)
    out: str | None = option(None, "study folder (runs/, report.md, results.json, pictures); required unless "
                             "--rejudge")
    rejudge: str | None = option(None, "judge a study folder of the earlier timing rules again by today's, from its "
                                 "results.json: keeps the one-network, one-process variants, names the others, "
                                 "trains nothing", metavar="FOLDER")
    quick: bool = option(False, "tiny sizes and budgets; alone, the quick preset")
    preset: str | None = option(None, "a named study (flags given override it)", choices=PRESETS)
    n_data: tuple[int, ...] | None = option(None, "training examples, comma-separated for a data-efficiency curve",
                                            min=1)
    T: tuple[float, ...] | None = option(None, "end time(s) of the truncated variants (default: 0.4)")
    workers: int | None = option(None, "workers of the interval variants and their control (default: 1, the "
                                 "networks queued)", min=1)
    threads: int | None = option(None, "torch CPU threads of each worker (default: the cores shared out over jobs x "
                                 "workers); every variant gets the same cores: one that trains one network in one "
                                 "process gets workers x threads threads", min=1)
    jobs: int | None = option(None, "runs trained side by side, each in its own process (default: 1), and as "
                              "many narrowed side by side; jobs x workers x threads beyond the cores is refused",
                              min=1)
    snapshot_every: int | None = option(None, "steps between kept snapshots (default: 2% of a step budget, 200 "
                                        "under a time budget); the evaluated ones are spread geometrically", min=1)
    metric: str | None = option(None, "the sample metric of every curve point (default: the data's own periodic "
                                "metric)", choices=METRICS)
    settings: list[str] | None = option(None, "a `scorefast train` flag for every variant, e.g. --set width=256 "
                                        "(repeatable)", flag="set", metavar="FLAG=VALUE")
    base_recipe: str | None = option(None, "the training recipe every method and control starts from (default: "
                                     "plain, or the preset's); the baselines keep theirs and plain stays the "
                                     "reference", choices=RECIPES)

    def __post_init__(self) -> None:
        for f in options_of(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(self, f.name, coerce(type(self), f, value, "bench"))


__all__ = ["BenchOptions"]
