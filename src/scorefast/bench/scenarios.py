"""The variants a study can run: the two baselines, each method, and the control beside each method.

A scenario is a name, its family (``group``), its ``role`` (baseline, method or control) and the
``scorefast train`` flags it sets on top of the study's settings for a data set (``Setting``). Every
method and control starts from the study's base recipe (plain unless the study says otherwise: the default
recipe for images, which a user trains with), so that a comparison isolates the one thing it adds; plain
stays the reference of every time to target. Each method names its controls - the cheaper explanation of
its claimed gain that the method must beat:

- score targets (empirical, knn, fp-regress, fp-embed) against DSM at 2x and 4x batch (a lower-variance
  target competes with simply averaging more noise), and fp-embed against itself with the embedding off;
- truncation (T < 1 with a fitted prior at T) against T = 1 with fewer large-t draws (SpeeD-style bins:
  0.8 of the draws below the variant's own T, 0.2 above) and against the likelihood-importance time sampler;
- interval networks against one network with the same time allocation (bins at the interval edge,
  equal shares) and the same samples per step (the batch doubled), on the same cores without DDP (on a
  small network the all-reduce would cost more than it shares);
- noise couplings (minibatch OT, immiscible) against the same base with the independent coupling: the
  baseline that trains the base recipe (plain, or default on the default recipe), never a second run of it;
- combined (a target, short T with a fitted prior, intervals) against DSM at 2x batch.

Nothing here imports torch at import time (``scorefast bench --help`` lists the names instantly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UserError
from ..registry import Registry

ROLES = ("baseline", "method", "control")
GROUPS = ("baselines", "recipes", "targets", "truncation", "intervals", "couplings", "combined")
PRIORS_AT_T = ("gaussian", "gmm", "flow")
BASELINE = "plain"


@dataclass(frozen=True)
class Setting:
    """What a scenario's flags depend on: the study's flags for one data set (``base``: batch size,
    network, ...), the data dimension, the end time of the truncation variants, the workers of the
    interval variants, whether the study is the tiny --quick one, the recipe every method and control
    starts from (``recipe``) and the kind of data ('points', 'image'; a recipe's defaults depend on it)."""

    base: dict
    dim: int
    T: float = 0.4
    workers: int = 1
    quick: bool = False
    recipe: str = BASELINE
    kind: str | None = None

    @property
    def start(self) -> dict:
        """The flags that select the base recipe: none for the default recipe (the flag a user leaves out)."""
        from ..config.recipes import DEFAULT_RECIPE
        return {} if self.recipe == DEFAULT_RECIPE else {"recipe": self.recipe}

    @property
    def baseline(self) -> str:
        """The scenario that trains the base recipe as it is: plain, default, or the recipe's own scenario."""
        from ..config.recipes import DEFAULT_RECIPE
        return {BASELINE: BASELINE, DEFAULT_RECIPE: "default"}.get(self.recipe, f"recipe-{self.recipe}")

    def config(self, **flags):
        """The configuration of the study's flags on the base recipe with ``flags`` on top, for this data (a
        study-wide option of a plug-in these flags do not select left out)."""
        from ..config import Config, applies, selected
        merged = {**self.base, **self.start, **flags}
        chosen = selected(merged, self.kind)
        return Config(self.kind, **{k: v for k, v in merged.items() if applies(k, chosen)})

    @property
    def batch(self) -> int:
        """The base's batch: the study's, else the base recipe's for this kind of data (256 on images under the
        default recipe), else the trainer's own."""
        return self.config().optim.batch_size

    def interval_edge(self) -> float:
        """The inner edge of the two-interval partition the 'intervals-2' variant trains on."""
        cfg = self.config(intervals=2)
        return cfg.edges(cfg.sde.build())[1]


@dataclass(frozen=True)
class Scenario:
    """One variant of a study: ``flags(setting)`` are its flags over the study's settings."""

    name: str
    group: str
    role: str
    help: str
    flags: Callable[[Setting], dict]
    controls: tuple[str, ...] = ()
    needs_grid: bool = False  # the Fokker-Planck grid target: data of dimension <= 3 only
    uses_T: bool = False  # one variant per end time of the study's --T
    base_control: bool = False  # also controlled by the scenario that trains the base recipe as it is

    def controls_on(self, setting: Setting) -> tuple[str, ...]:
        """Its controls in a study on ``setting``: its own, and the base recipe's own scenario where that is its
        control (plain, the reference of every comparison anyway, is not named twice)."""
        base = (setting.baseline,) if self.base_control and setting.baseline != BASELINE else ()
        return (*self.controls, *base)

    def __reduce__(self):  # sent to a --jobs process by name: its flags function may be a closure
        return scenario_named, (self.name,)

    def applies(self, dim: int) -> str | None:
        """None if this scenario can run on data of ``dim`` dimensions, else why not."""
        from ..methods.targets import MAX_GRID_DIM
        if self.needs_grid and dim > MAX_GRID_DIM:
            return f"needs a Fokker-Planck grid, so d <= {MAX_GRID_DIM} (d = {dim})"
        return None


SCENARIOS = Registry("scenario", flag="methods", title="bench scenario")


def scenario_named(name: str) -> Scenario:
    """The registered scenario ``name`` (how a scenario is rebuilt in another process)."""
    return SCENARIOS[name]


def scenario(name: str, group: str, role: str, help: str, controls: tuple[str, ...] = (), needs_grid: bool = False,
             uses_T: bool = False, base_control: bool = False
             ) -> Callable[[Callable[[Setting], dict]], Callable[[Setting], dict]]:
    """Decorator: register the flags function of scenario ``name`` (its name and description beside it)."""
    def decorate(fn: Callable[[Setting], dict]) -> Callable[[Setting], dict]:
        if group not in GROUPS or role not in ROLES:
            raise ValueError(f"scenario '{name}': unknown group '{group}' or role '{role}'")
        SCENARIOS.add(name, Scenario(name, group, role, help, fn, controls, needs_grid, uses_T, base_control), help)
        return fn
    return decorate


PLAIN = {"recipe": "plain"}


def quick_grid(s: Setting) -> dict:
    """A coarser Fokker-Planck grid for the --quick study (the grid targets' own defaults otherwise); what the
    user gave with --set stays."""
    coarse = {"fp_grid": 65, "fp_steps": 24} if s.quick and s.dim <= 3 else {}
    return {k: v for k, v in coarse.items() if k not in s.base}


def fitted_prior(name: str, s: Setting) -> dict:
    """A prior at T, fitted before training so that its seconds count in the run's wall-clock."""
    flags = {"prior": name, "prior_fit": "before"}
    if s.quick and name != "gaussian" and "prior_steps" not in s.base:
        flags["prior_steps"] = 200
    return flags


# -- baselines ----------------------------------------------------------------------------------------

@scenario("plain", "baselines", "baseline", "plain DSM: the plain recipe (scorefast 0.1's training), the reference "
          "of every time-to-target")
def _plain(s: Setting) -> dict:
    return dict(PLAIN)


@scenario("default", "baselines", "baseline", "the default recipe: no --recipe flag, whatever scorefast trains with "
          "by default")
def _default(s: Setting) -> dict:
    return {}


# -- the other training recipes --------------------------------------------------------------------------

def _recipe(name: str) -> Callable[[Setting], dict]:
    def flags(s: Setting) -> dict:
        return {"recipe": name}
    return flags


def _register_recipes() -> None:
    """One scenario per registered recipe besides plain and the default (which the baselines are)."""
    from ..config.recipes import DEFAULT_RECIPE, RECIPES
    for name, recipe in RECIPES.items():
        if name not in (PLAIN["recipe"], DEFAULT_RECIPE):
            scenario(f"recipe-{name}", "recipes", "method", f"the {name} recipe: {recipe.description}")(_recipe(name))


_register_recipes()


# -- score targets --------------------------------------------------------------------------------------

TARGET_CONTROLS = ("batch-2x", "batch-4x")


@scenario("empirical", "targets", "method", "regression on the closed-form score of the diffused data over a "
          "reference batch (Stable Target Field)", TARGET_CONTROLS)
def _empirical(s: Setting) -> dict:
    return {**s.start, "method": "empirical"}


@scenario("knn", "targets", "method", "regression on the posterior mean over the nearest training points",
          TARGET_CONTROLS)
def _knn(s: Setting) -> dict:
    return {**s.start, "method": "knn"}


@scenario("fp-regress", "targets", "method", "regression on the Fokker-Planck grid score of the data's KDE "
          "(d <= 3)", TARGET_CONTROLS, needs_grid=True)
def _fp_regress(s: Setting) -> dict:
    return {**s.start, "method": "fp-regress", **quick_grid(s)}


@scenario("fp-embed", "targets", "method", "the score-embedding paper's transport embedding of a pre-computed score",
          (*TARGET_CONTROLS, "fp-embed-off"))
def _fp_embed(s: Setting) -> dict:
    return {**s.start, "method": "fp-embed", **quick_grid(s)}


@scenario("batch-2x", "targets", "control", "the base recipe at twice its batch (control of the score targets)")
def _batch2(s: Setting) -> dict:
    return {**s.start, "batch_size": 2 * s.batch}


@scenario("batch-4x", "targets", "control", "the base recipe at four times its batch (control of the score targets)")
def _batch4(s: Setting) -> dict:
    return {**s.start, "batch_size": 4 * s.batch}


@scenario("fp-embed-off", "targets", "control", "fp-embed with every pre-computed score zero: its pipeline and "
          "precomputation without the embedding (control of fp-embed)")
def _fp_embed_off(s: Setting) -> dict:
    return {**s.start, "method": "fp-embed-off", **quick_grid(s)}


# -- truncation -----------------------------------------------------------------------------------------

TRUNCATION_CONTROLS = ("t1-downweighted", "t1-likelihood")


def _truncated(prior: str) -> Callable[[Setting], dict]:
    def flags(s: Setting) -> dict:
        return {**s.start, "T": s.T, **fitted_prior(prior, s)}
    return flags


for _prior in PRIORS_AT_T:
    scenario(f"trunc-{_prior}", "truncation", "method", f"a shorter diffusion (T = the study's --T) bridged by a "
             f"{_prior} prior fitted at T", TRUNCATION_CONTROLS, uses_T=True)(_truncated(_prior))


@scenario("t1-downweighted", "truncation", "control", "T = 1 with large-t steps down-weighted (SpeeD-style: 0.8 of "
          "the draws below the T of the truncated variant it controls, 0.2 above)", uses_T=True)
def _downweighted(s: Setting) -> dict:
    return {**s.start, "time_sampler": "bins", "time_edges": f"{s.T:g}", "time_shares": "0.8,0.2"}


@scenario("t1-likelihood", "truncation", "control", "T = 1 with the likelihood-importance time sampler (control of "
          "truncation)")
def _likelihood(s: Setting) -> dict:
    return {**s.start, "time_sampler": "likelihood"}


# -- interval networks ----------------------------------------------------------------------------------

@scenario("intervals-2", "intervals", "method", "two networks on two log-SNR intervals of [eps, T], each with the "
          "study's batch, on the study's --workers (queued on one, one after the other)", ("one-net-allocation",))
def _intervals(s: Setting) -> dict:
    return {**s.start, "intervals": 2, "workers": s.workers}


@scenario("one-net-allocation", "intervals", "control", "one network with the time allocation of intervals-2 and its "
          "samples per step (twice the batch), on the same cores without DDP: bins at its edge with equal shares, "
          "or the base's own time sampler where intervals-2 splits it into equal shares (the default recipe's "
          "log-normal noise levels on images: then it is batch-2x)")
def _one_net(s: Setting) -> dict:
    intervals = s.config(intervals=2)
    sde = intervals.sde.build()
    times = intervals.time_sampler.bind(sde, sde.eps, sde.T)
    if intervals.partition.partition == "allocation" and not hasattr(times, "update"):
        allocation = {}  # each interval holds an equal share of the base sampler's draws: the mixture is that sampler
    else:
        allocation = {"time_sampler": "bins", "time_edges": f"{s.interval_edge():.6g}", "time_shares": "0.5,0.5"}
    return {**s.start, **allocation, "batch_size": 2 * s.batch}


# -- noise couplings ------------------------------------------------------------------------------------

def _coupled(name: str) -> Callable[[Setting], dict]:
    def flags(s: Setting) -> dict:
        return {**s.start, "coupling": name}
    return flags


def _register_couplings() -> None:
    """One scenario per registered coupling besides the independent one (the base's own, their control)."""
    from ..couplings import COUPLINGS
    for name in COUPLINGS:
        if name != COUPLINGS.default:
            scenario(f"coupling-{name}", "couplings", "method", f"the base recipe with the {name} noise coupling "
                     f"({COUPLINGS.help(name).rstrip('.')}): each batch's noise draws are reassigned to its examples "
                     "(the papers' claim: straighter paths, easier to learn); the assignment's seconds count in its "
                     "wall-clock; its control is the base with the independent coupling (the baseline that trains "
                     "the base recipe, not run twice); scored by the probability-flow NLL and ODE samples (a coupled "
                     "path allows no SDE sampler, no prior fitted at T, no ELBO)", base_control=True)(_coupled(name))


_register_couplings()


# -- everything at once ---------------------------------------------------------------------------------

@scenario("combined", "combined", "method", "the empirical target + T = the study's --T with a fitted GMM prior + "
          "two interval networks (none of the papers tried it)", ("batch-2x",), uses_T=True)
def _combined(s: Setting) -> dict:
    return {**s.start, "method": "empirical", "T": s.T, **fitted_prior("gmm", s), "intervals": 2,
            "workers": s.workers}


@dataclass
class Selection:
    """The scenarios a --methods list selects, in registry order: the baselines always, every method named
    (or of a group named) with its controls, and controls named on their own; a name after a minus sign is
    left out ('fp-embed,-batch-4x': fp-embed and its controls but the 4x batch)."""

    names: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> Selection:
        words = [w.strip() for w in ("all" if text is None else text).split(",") if w.strip()]
        if not words:
            raise UserError("--methods is empty; name scenarios or groups (or all)")
        chosen = {name for name, sc in SCENARIOS.items() if sc.role == "baseline"}
        dropped = {w[1:].strip() for w in words if w.startswith("-")}
        for name in dropped:
            if name not in SCENARIOS:
                raise UserError(f"unknown --methods entry '-{name}'; a minus sign leaves out one of "
                                f"{', '.join(SCENARIOS)}")
            if SCENARIOS[name].role == "baseline":
                raise UserError(f"--methods: the baseline '{name}' always runs; it cannot be left out")
        for word in (w for w in words if not w.startswith("-")):
            if word == "all":
                chosen |= set(SCENARIOS)
            elif word in GROUPS:
                chosen |= {name for name, sc in SCENARIOS.items() if sc.group == word}
            elif word in SCENARIOS:
                chosen |= {word, *SCENARIOS[word].controls}
            else:
                raise UserError(f"unknown --methods entry '{word}'; choose from all, {', '.join(GROUPS)}, "
                                f"{', '.join(SCENARIOS)}")
        return cls([name for name in SCENARIOS if name in chosen - dropped])


def choices_text() -> str:
    """The --methods choices in one line, for --help."""
    return f"all, a group ({', '.join(GROUPS)}) or scenarios ({', '.join(SCENARIOS)})"


__all__ = ["BASELINE", "GROUPS", "PRIORS_AT_T", "ROLES", "SCENARIOS", "Scenario", "Selection", "Setting",
           "choices_text", "scenario", "scenario_named"]
