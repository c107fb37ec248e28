"""The sections of a run's configuration: one dataclass each, every field declared with ``registry.option``
(help text, flag name, whether a resumed run may change it, the values it accepts, which ``registry.check``
enforces). What one field cannot say is checked by the section's ``validate``, which imports what it needs
lazily: nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import DATASETS, METRICS, NET_PRESETS, PARAMETERISATIONS, SAMPLERS, SCHEDULES, SDES
from ..couplings import COUPLINGS
from ..errors import UserError
from ..registry import option
from .recipes import DEFAULT_RECIPE, RECIPES


class Section:
    """Base of the sections: each field checks its own value (``registry.check``); ``validate`` checks what no
    one field can say."""

    def validate(self) -> None:
        """Raise UserError (one line) for values that conflict, before anything is written."""


@dataclass
class DataSection(Section):
    spec: str = option(DATASETS.default, "a path (.npy/.npz, image folder, MNIST idx, CIFAR-10 batch) or a built-in "
                       f"data set: {DATASETS.listing()}", flag="data")
    n: int | None = option(None, "use only the first N examples of the data set (generated sets: how many to draw)",
                           flag="n_data", min=1)
    sigma_data: float | None = option(None, "standard deviation of the data for EDM's preconditioning and weighting "
                                      "(default: measured on the training data)", above=0)
    xflip: bool | None = option(None, "random horizontal flips of the training images, as EDM and k-diffusion do "
                                "for natural images (default: on for photos32 and user image files, off for digits "
                                "and mnist; refused for points)")
    dequantise: bool | None = option(None, "train on uniformly dequantised pixels x = 2(q+u)/K - 1, u ~ U[0,1), the "
                                     "law the bits/dim is scored on, so that it is a proper bound (default: on for "
                                     "discrete images: digits, mnist, 8-bit files)")

    def validate(self) -> None:
        if not self.spec:
            raise UserError("--data must name a data set or a path")


@dataclass
class SDESection(Section):
    name: str = option(SDES.default, "forward SDE", flag="sde", choices=SDES)
    T: float = option(1.0, "end time of the forward diffusion, in (eps, 1]; T < 1 fits an auxiliary prior at T",
                      max=1.0)
    eps: float = option(1e-3, "smallest diffusion time", above=0, below=0.1)

    def validate(self) -> None:
        if not self.eps < self.T:
            raise UserError(f"--T must be in ({self.eps}, 1], got {self.T}")

    def build(self):
        from ..sde import make_sde
        return make_sde(self.name, T=self.T, eps=self.eps)


@dataclass
class NetSection(Section):
    param: str = option(PARAMETERISATIONS.default, "network output", choices=PARAMETERISATIONS)
    arch: str = option("auto", "network: mlp, unet, or auto (a U-Net for images, an MLP otherwise)",
                       choices=("auto", "mlp", "unet"))
    width: int | None = option(None, "hidden width of the MLP / base channels of the U-Net (default 128 / 32, or "
                               "the preset's)", min=1)
    depth: int = option(3, "hidden layers of the MLP", min=1)
    preset: str | None = option(None, "U-Net preset", flag="net_preset", choices=NET_PRESETS)
    channel_mults: tuple[int, ...] | None = option(None, "U-Net channel multiplier per level, e.g. 1,2,2,2 (default "
                                                   "1,2 up to 16 pixels, else 1,2,2)")
    res_blocks: int | None = option(None, "U-Net residual blocks per level (default 1)")
    attention: tuple[int, ...] | None = option(None, "U-Net levels (image side in pixels) with self-attention, e.g. "
                                               "16 (default none)")
    dropout: float | None = option(None, "U-Net dropout in the residual blocks (default 0)")
    heads: int | None = option(None, "U-Net attention heads (default 1)")

    def options(self) -> dict:
        """Keyword arguments of ``nets.make_net`` (U-Net options left at None take the preset's or default)."""
        return {"arch": self.arch, "width": self.width, "depth": self.depth, "preset": self.preset,
                "channel_mults": self.channel_mults, "res_blocks": self.res_blocks, "attention": self.attention,
                "dropout": self.dropout, "heads": self.heads}


@dataclass
class ObjectiveSection(Section):
    coupling: str = option(COUPLINGS.default, "which noise draw perturbs which example of a batch (a coupling "
                           "allows only the probability-flow samplers and no fitted prior at T)", choices=COUPLINGS)

    def check(self, *, sampler: str, fitted_prior: bool, batch_size: int) -> None:
        """One-line UserError for an evaluation this objective invalidates (see ``couplings``)."""
        COUPLINGS.create(self.coupling).check(sampler=sampler, fitted_prior=fitted_prior, batch_size=batch_size)

    def build(self, model, sde, goal, times, weighting):
        """The ``objective.Objective`` of ``model``: the target's goal, times, weighting and this coupling."""
        from ..objective import Objective
        return Objective(model, sde, goal, times, weighting, COUPLINGS.create(self.coupling))


@dataclass
class OptimSection(Section):
    batch_size: int = option(512, "examples per optimiser step (split across the data-parallel workers of a "
                             "network)", locked=False, min=1)
    lr: float = option(1e-3, "Adam learning rate", locked=False, above=0)
    warmup: int = option(0, "linear learning-rate warm-up steps (0: none)", locked=False, min=0)
    adam_beta2: float = option(0.999, "Adam's second-moment decay beta2 (EDM: 0.999, EDM2: 0.99; lower adapts the "
                               "step size faster)", locked=False, min=0, below=1)
    grad_clip: float = option(1.0, "clip the gradient norm to this value (0: no clipping)", locked=False, min=0)
    seed: int = option(0, "random seed (runs are deterministic on CPU for a given seed)", locked=False)


@dataclass
class BudgetSection(Section):
    steps: int | None = option(None, "optimiser steps per network (default: 2000, or no cap with --time-budget)",
                               locked=False, min=1)
    time_budget: float | None = option(None, "stop after this many seconds of training per network "
                                       "(precomputation counted, evaluation not)", locked=False, above=0)

    DEFAULT_STEPS = 2000

    @property
    def max_steps(self) -> int | None:
        """The step cap: --steps, else 2000 unless a time budget is given (then no cap)."""
        if self.steps is not None:
            return self.steps
        return None if self.time_budget is not None else self.DEFAULT_STEPS


@dataclass
class LogSection(Section):
    out: str = option("runs/run", "run directory to create (refused if it exists, unless --resume)", locked=False)
    eval_budget: float = option(0.0, "largest fraction of the run's time the periodic evaluations may take (0: no "
                                "limit); a due evaluation is skipped while it would take more", locked=False, min=0,
                                max=1)
    eval_every: int = option(500, "steps between evaluations of the periodic metric (SWD, or the digits Frechet "
                             "distance)", locked=False, min=1)
    eval_samples: int = option(2000, "samples drawn for each evaluation (fixed seed)", locked=False, min=1)
    eval_metric: str = option("auto", "sample-quality metric of the periodic and final evaluations: auto (1 - "
                              "best-match SSIM for a few images, the digits Frechet distance for digits and mnist, "
                              "SWD otherwise: seconds), or a name of `scorefast evaluate --metric` (fid and kid cost "
                              "about 0.25 s a sample on 2 CPU cores: use few --eval-samples, and kid, which is "
                              "unbiased at any n; then the standard FID of more samples with `scorefast evaluate "
                              "--metric fid`)", locked=False, choices=("auto", *METRICS))
    eval_steps: int = option(100, "sampler steps for each evaluation and for the final samples (at T = 1; a "
                             "truncated run takes about T of them)", locked=False, min=1)
    sampler: str = option(SAMPLERS.default, "sampler for the evaluations and the final samples", locked=False,
                          choices=SAMPLERS)
    schedule: str | None = option(None, "time grid of the sampler (default: the sampler's own: uniform for "
                                  "ode/em/pc, logsnr for dpmpp-2m, karras for heun/euler-a)", locked=False,
                                  choices=SCHEDULES)
    ckpt_every: int = option(500, "steps between checkpoints (a killed run loses at most this many)", locked=False,
                             min=1)
    snapshot_every: int = option(0, "keep the EMA weights every N steps in snapshots/ (0: never), for "
                                 "quality-vs-time curves", locked=False, min=0)
    posthoc_ema_every: int = option(0, "keep power EMAs of sigma_rel 0.05 and 0.10 every N steps in posthoc/ (0: "
                                    "never), so that `scorefast ema --sigma-rel S` can rebuild an EMA of any length "
                                    "after training (EDM2's post-hoc EMA)", min=0)
    tensorboard: bool = option(False, "also write the metrics log as TensorBoard event files in RUN/tensorboard "
                               "(needs the extra: pip install scorefast[tensorboard])", locked=False)

    def validate(self) -> None:
        if self.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install 'scorefast[tensorboard]' "
                                "(or pip install tensorboard)") from None


@dataclass
class LaunchSection(Section):
    workers: int = option(1, "processes for torch.distributed training (intervals in parallel, DDP inside a group)",
                          locked=False, min=1)
    max_restarts: int = option(0, "with --workers: let torchrun restart failed workers this many times (they "
                               "resume)", locked=False, min=0)
    threads: int | None = option(None, "torch CPU threads in this process (default: all cores; 1 per worker when "
                                 "distributed)", locked=False, min=1)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N", locked=False)
    worker_timeout: float = option(300.0, "with --workers: seconds a worker may send no heartbeat (hung, stopped) "
                                   "before the job is stopped", locked=False, above=0)
    precision: str = option("fp32", "arithmetic of the training step: fp32, or bf16 (autocast)", locked=False,
                            choices=("fp32", "bf16"))
    compile: bool = option(False, "compile the training step with torch.compile", locked=False)


@dataclass
class RecipeSection(Section):
    name: str = option(DEFAULT_RECIPE, "training recipe: the defaults of the flags below, each overridden by a flag "
                       "given", flag="recipe", choices=RECIPES)


SECTIONS: dict[str, type] = {"recipe": RecipeSection, "data": DataSection, "sde": SDESection, "net": NetSection,
                             "objective": ObjectiveSection, "optim": OptimSection, "budget": BudgetSection,
                             "log": LogSection, "launch": LaunchSection}


__all__ = ["BudgetSection", "DataSection", "LaunchSection", "LogSection", "NetSection", "ObjectiveSection",
           "OptimSection", "RecipeSection", "SDESection", "SECTIONS", "Section"]
