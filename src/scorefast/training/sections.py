"""The sections of a run's configuration: one dataclass each, every field declared with ``registry.option``
(help text, flag name, whether a resumed run may change it). Their values are checked by ``validate``,
which imports what it checks against lazily: nothing here imports torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..registry import flag_of, option
from .recipes import DEFAULT_RECIPE, RECIPES


def at_least(section: Any, name: str, lowest: int) -> None:
    """One clear error if the section's ``name`` is below ``lowest`` (None passes)."""
    value = getattr(section, name)
    if value is not None and value < lowest:
        f = next(f for f in dataclasses.fields(section) if f.name == name)
        raise UserError(f"--{flag_of(f).replace('_', '-')} must be >= {lowest}, got {value}")


def choice(section: Any, name: str, choices) -> None:
    """One clear error if the section's ``name`` is not one of ``choices``."""
    value = getattr(section, name)
    if value not in choices:
        raise UserError(f"unknown --{name.replace('_', '-')} {value!r}; choose one of {', '.join(sorted(choices))}")


@dataclass
class DataSection:
    spec: str = option("moons", "built-in data set (moons, 8gaussians, checkerboard, swissroll, pinwheel, rings, "
                       "offcentre, gaussian2d, digits, digits32, photos32, mnist) or a path (.npy/.npz, image "
                       "folder, MNIST idx, CIFAR-10 batch)", flag="data")
    n: int | None = option(None, "use only the first N examples of the data set (generated sets: how many to draw)",
                           flag="n_data")
    sigma_data: float | None = option(None, "standard deviation of the data for EDM's preconditioning and weighting "
                                      "(default: measured on the training data)")
    xflip: bool | None = option(None, "random horizontal flips of the training images, as EDM and k-diffusion do "
                                "for natural images (default: on for photos32 and user image files, off for digits "
                                "and mnist; refused for points)")
    dequantise: bool | None = option(None, "train on uniformly dequantised pixels x = 2(q+u)/K - 1, u ~ U[0,1), the "
                                     "law the bits/dim is scored on, so that it is a proper bound (default: on for "
                                     "discrete images: digits, mnist, 8-bit files)")

    def validate(self) -> None:
        if not self.spec:
            raise UserError("--data must name a data set or a path")
        at_least(self, "n", 1)
        if self.sigma_data is not None and not self.sigma_data > 0:
            raise UserError(f"--sigma-data must be > 0, got {self.sigma_data}")


@dataclass
class SDESection:
    name: str = option("vp", "forward SDE: vp (beta 0.1..20), subvp, ve (geometric 0.01..50), vp-psm (beta=2ct, "
                       "c=5), ve-power (g=5^t, the score-embedding code's)", flag="sde")
    T: float = option(1.0, "end time of the forward diffusion, in (eps, 1]; T < 1 fits an auxiliary prior at T")
    eps: float = option(1e-3, "smallest diffusion time")

    def validate(self) -> None:
        from ..sde import SDE_NAMES
        if self.name not in SDE_NAMES:
            raise UserError(f"unknown SDE {self.name!r}; choose one of {', '.join(SDE_NAMES)}")
        if not (0 < self.eps < 0.1):
            raise UserError(f"--eps must be in (0, 0.1), got {self.eps}")
        if not (self.eps < self.T <= 1.0):
            raise UserError(f"--T must be in ({self.eps}, 1], got {self.T}")

    def build(self):
        from ..sde import make_sde
        return make_sde(self.name, T=self.T, eps=self.eps)


@dataclass
class NetSection:
    param: str = option("eps", "network output: eps (noise), score, data (x0), or edm (EDM's preconditioned denoiser)")
    arch: str = option("auto", "network: mlp, unet, or auto (a U-Net for images, an MLP otherwise)",
                       choices=("auto", "mlp", "unet"))
    width: int | None = option(None, "hidden width of the MLP / base channels of the U-Net (default 128 / 32, or "
                               "the preset's)")
    depth: int = option(3, "hidden layers of the MLP")
    preset: str | None = option(None, "U-Net preset: cifar10 (DDPM's CIFAR-10 settings, 23.8 M parameters)",
                                flag="net_preset")
    channel_mults: tuple[int, ...] | None = option(None, "U-Net channel multiplier per level, e.g. 1,2,2,2 (default "
                                                   "1,2 up to 16 pixels, else 1,2,2)")
    res_blocks: int | None = option(None, "U-Net residual blocks per level (default 1)")
    attention: tuple[int, ...] | None = option(None, "U-Net levels (image side in pixels) with self-attention, e.g. "
                                               "16 (default none)")
    dropout: float | None = option(None, "U-Net dropout in the residual blocks (default 0)")
    heads: int | None = option(None, "U-Net attention heads (default 1)")

    def validate(self) -> None:
        from ..nets import PARAMETERISATIONS
        choice(self, "param", PARAMETERISATIONS)
        choice(self, "arch", ("auto", "mlp", "unet"))
        at_least(self, "width", 1)
        at_least(self, "depth", 1)

    def options(self) -> dict:
        """Keyword arguments of ``nets.make_net`` (U-Net options left at None take the preset's or default)."""
        return {"arch": self.arch, "width": self.width, "depth": self.depth, "preset": self.preset,
                "channel_mults": self.channel_mults, "res_blocks": self.res_blocks, "attention": self.attention,
                "dropout": self.dropout, "heads": self.heads}


@dataclass
class ObjectiveSection:
    coupling: str = option("independent", "which noise draw perturbs which example of a batch: independent (as "
                           "drawn), minibatch-ot (exact OT on squared distances, OT-CFM) or immiscible (Immiscible "
                           "Diffusion's assignment); a coupling allows only the probability-flow samplers and no "
                           "fitted prior at T")

    def validate(self) -> None:
        from ..couplings import COUPLINGS
        choice(self, "coupling", COUPLINGS.names())

    def check(self, *, sampler: str, fitted_prior: bool, batch_size: int) -> None:
        """One-line UserError for an evaluation this objective invalidates (see ``couplings``)."""
        from ..couplings import COUPLINGS
        COUPLINGS.create(self.coupling).check(sampler=sampler, fitted_prior=fitted_prior, batch_size=batch_size)

    def build(self, model, sde, goal, times, weighting):
        """The ``objective.Objective`` of ``model``: the target's goal, times, weighting and this coupling."""
        from ..couplings import COUPLINGS
        from ..objective import Objective
        return Objective(model, sde, goal, times, weighting, COUPLINGS.create(self.coupling))


@dataclass
class OptimSection:
    batch_size: int = option(512, "examples per optimiser step (split across the data-parallel workers of a "
                             "network)", locked=False)
    lr: float = option(1e-3, "Adam learning rate", locked=False)
    warmup: int = option(0, "linear learning-rate warm-up steps (0: none)", locked=False)
    adam_beta2: float = option(0.999, "Adam's second-moment decay beta2 (EDM: 0.999, EDM2: 0.99; lower adapts the "
                               "step size faster)", locked=False)
    grad_clip: float = option(1.0, "clip the gradient norm to this value (0: no clipping)", locked=False)
    seed: int = option(0, "random seed (runs are deterministic on CPU for a given seed)", locked=False)

    def validate(self) -> None:
        at_least(self, "batch_size", 1)
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        at_least(self, "warmup", 0)
        if not 0 <= self.adam_beta2 < 1:
            raise UserError(f"--adam-beta2 must be in [0, 1), got {self.adam_beta2}")
        if not self.grad_clip >= 0:
            raise UserError(f"--grad-clip must be >= 0 (0: no clipping), got {self.grad_clip}")


@dataclass
class BudgetSection:
    steps: int | None = option(None, "optimiser steps per network (default: 2000, or no cap with --time-budget)",
                               locked=False)
    time_budget: float | None = option(None, "stop after this many seconds of training per network "
                                       "(precomputation counted, evaluation not)", locked=False)

    DEFAULT_STEPS = 2000

    def validate(self) -> None:
        at_least(self, "steps", 1)
        if self.time_budget is not None and not self.time_budget > 0:
            raise UserError(f"--time-budget must be > 0 seconds, got {self.time_budget}")

    @property
    def max_steps(self) -> int | None:
        """The step cap: --steps, else 2000 unless a time budget is given (then no cap)."""
        if self.steps is not None:
            return self.steps
        return None if self.time_budget is not None else self.DEFAULT_STEPS


@dataclass
class LogSection:
    out: str = option("runs/run", "run directory to create (refused if it exists, unless --resume)", locked=False)
    eval_budget: float = option(0.0, "largest fraction of the run's time the periodic evaluations may take (0: no "
                                "limit); a due evaluation is skipped while it would take more", locked=False)
    eval_every: int = option(500, "steps between evaluations of the periodic metric (SWD, or the digits Frechet "
                             "distance)", locked=False)
    eval_samples: int = option(2000, "samples drawn for each evaluation (fixed seed)", locked=False)
    eval_metric: str = option("auto", "sample-quality metric of the periodic and final evaluations: auto (1 - "
                              "best-match SSIM for a few images, the digits Frechet distance for digits and mnist, "
                              "SWD otherwise: seconds), or a name of `scorefast evaluate --metric` (fid and kid cost "
                              "about 0.25 s a sample on 2 CPU cores: use few --eval-samples, and kid, which is "
                              "unbiased at any n; then the standard FID of more samples with `scorefast evaluate "
                              "--metric fid`)", locked=False)
    eval_steps: int = option(100, "sampler steps for each evaluation and for the final samples (at T = 1; a "
                             "truncated run takes about T of them)", locked=False)
    sampler: str = option("ode", "sampler for the evaluations and the final samples: ode (probability flow, RK4), em "
                          "(Euler-Maruyama), pc (predictor-corrector), dpmpp-2m (DPM-Solver++(2M)), heun (EDM's), "
                          "euler-a (Euler ancestral)", locked=False)
    schedule: str | None = option(None, "time grid of the sampler: uniform (in t), karras or logsnr (in the noise "
                                  "level); default: the sampler's own (uniform for ode/em/pc, logsnr for dpmpp-2m, "
                                  "karras for heun/euler-a)", locked=False)
    ckpt_every: int = option(500, "steps between checkpoints (a killed run loses at most this many)", locked=False)
    snapshot_every: int = option(0, "keep the EMA weights every N steps in snapshots/ (0: never), for "
                                 "quality-vs-time curves", locked=False)
    posthoc_ema_every: int = option(0, "keep power EMAs of sigma_rel 0.05 and 0.10 every N steps in posthoc/ (0: "
                                    "never), so that `scorefast ema --sigma-rel S` can rebuild an EMA of any length "
                                    "after training (EDM2's post-hoc EMA)")
    tensorboard: bool = option(False, "also write the metrics log as TensorBoard event files in RUN/tensorboard "
                               "(needs the extra: pip install scorefast[tensorboard])", locked=False)

    def validate(self) -> None:
        if self.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install 'scorefast[tensorboard]' "
                                "(or pip install tensorboard)") from None
        from ..sampling import SAMPLERS
        if not 0 <= self.eval_budget <= 1:
            raise UserError(f"--eval-budget must be in [0, 1], got {self.eval_budget}")
        for name in ("eval_every", "eval_samples", "eval_steps", "ckpt_every"):
            at_least(self, name, 1)
        at_least(self, "snapshot_every", 0)
        at_least(self, "posthoc_ema_every", 0)
        choice(self, "sampler", SAMPLERS)
        from ..evaluate import METRICS
        choice(self, "eval_metric", ["auto", *METRICS])
        if self.schedule is not None:
            from ..ksampling import SCHEDULES
            choice(self, "schedule", SCHEDULES)


@dataclass
class LaunchSection:
    workers: int = option(1, "processes for torch.distributed training (intervals in parallel, DDP inside a group)",
                          locked=False)
    max_restarts: int = option(0, "with --workers: let torchrun restart failed workers this many times (they "
                               "resume)", locked=False)
    threads: int | None = option(None, "torch CPU threads in this process (default: all cores; 1 per worker when "
                                 "distributed)", locked=False)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N", locked=False)
    worker_timeout: float = option(300.0, "with --workers: seconds a worker may send no heartbeat (hung, stopped) "
                                   "before the job is stopped", locked=False)
    precision: str = option("fp32", "arithmetic of the training step: fp32, or bf16 (autocast)", locked=False,
                            choices=("fp32", "bf16"))
    compile: bool = option(False, "compile the training step with torch.compile", locked=False)

    def validate(self) -> None:
        at_least(self, "workers", 1)
        at_least(self, "max_restarts", 0)
        at_least(self, "threads", 1)
        if not self.worker_timeout > 0:
            raise UserError(f"--worker-timeout must be > 0 seconds, got {self.worker_timeout}")
        choice(self, "precision", ("fp32", "bf16"))
        if self.compile:
            from ..training.systems import check_compile
            check_compile()


@dataclass
class RecipeSection:
    name: str = option(DEFAULT_RECIPE, "training recipe: the defaults of the flags below, each overridden by a flag "
                       "given: one of " + ", ".join(RECIPES) + "; plain is scorefast 0.1's (uniform t, epsilon "
                       "weighting, fixed EMA, constant rate), edm is EDM's published training (Karras et al. 2022)",
                       flag="recipe")

    def validate(self) -> None:
        choice(self, "name", RECIPES)


SECTIONS: dict[str, type] = {"recipe": RecipeSection, "data": DataSection, "sde": SDESection, "net": NetSection,
                             "objective": ObjectiveSection, "optim": OptimSection, "budget": BudgetSection,
                             "log": LogSection, "launch": LaunchSection}


__all__ = ["BudgetSection", "DataSection", "LaunchSection", "LogSection", "NetSection", "ObjectiveSection",
           "OptimSection", "RecipeSection", "SDESection", "SECTIONS", "at_least", "choice"]
