"""Named studies: ``scorefast bench --preset NAME`` (flags given beside it override the preset's).

Each entry is written beside its name; ``quick`` is also what ``--quick`` runs when no preset is named.
The README's tables come from the ``readme-*`` presets (their protocol is the bench's: one evaluator,
plain DSM's final NLL as the target, every method beside its controls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..choices import MNIST_RUN
from ..config.recipes import DEFAULT_RECIPE
from ..registry import Registry


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
    jobs: int = 1
    snapshot_every: int | None = None
    settings: dict = field(default_factory=dict)
    evaluation: dict | None = None  # the curves' protocol (curves.Protocol's fields), when not the bench's own
    base_recipe: str = "plain"  # the recipe every method and control starts from


PRESETS = Registry("preset", flag="preset", title="named study", default="quick")


def preset(p: Preset) -> Preset:
    """Register a preset under its name, with its description as its help."""
    return PRESETS.add(p.name, p, p.description)


preset(Preset("quick", "every method and control once, tiny sizes and budgets, on a 2-D set and 8x8 digits: a "
              "smoke test of the whole bench (minutes on 2 CPU cores; its numbers mean little)",
              data=("checkerboard", "digits"), methods="all", budget="200steps", seeds=1, quick=True, threads=1))

preset(Preset("readme-recipe", "plain DSM against the default recipe on three 2-D sets (the README's "
              "training-recipe table; images are measured by readme-images-cpu)",
              data=("checkerboard", "8gaussians", "sharpbroad"), methods="baselines", budget="4000steps", seeds=3,
              threads=1))

preset(Preset("readme-truncation", "shorter diffusion times with each prior against T = 1 with fewer large-t draws "
              "and with the likelihood time sampler on a 2-D set (the README's truncation tables; images are "
              "measured by readme-images-methods-cpu)",
              data=("offcentre",), methods="truncation", budget="2000steps", seeds=3, T=(0.2, 0.4), threads=1))

preset(Preset("readme-parallel", "two interval networks side by side on 2 workers against one network with their "
              "time allocation and samples per step on the same 2 cores (2 threads, no DDP), and the one-network "
              "baselines on 2 threads, on two 2-D sets (the README's parallel table; images are measured by "
              "readme-images-methods-cpu)",
              data=("checkerboard", "8gaussians"), methods="intervals", budget="2000steps", seeds=3,
              workers=2, threads=1, settings={"sde": "vp-psm"}))

preset(Preset("data-efficiency", "the score targets and plain DSM at 80, 320, 2,000 and 5,120 examples of a 2-D "
              "set, 80 % of them for training (the data-efficiency curve; batch 64, so that the smaller sets hold a "
              "batch)", data=("checkerboard",), methods="targets", budget="2000steps", seeds=3,
              n_data=(80, 320, 2000, 5120), threads=1, settings={"batch_size": 64}))

preset(Preset("data-efficiency-digits", "the data-efficiency study on 8x8 digits: 320 of them and all 1,797",
              data=("digits",), methods="targets", budget="2000steps", seeds=3, n_data=(320, 1797), threads=1,
              settings={"batch_size": 64}))

preset(Preset("full", "every method and control on two 2-D sets and 8x8 digits, 2 seeds, two runs side by side "
              "(as many as the cores allow)", data=("checkerboard", "8gaussians", "digits"), methods="all",
              budget="2000steps", seeds=2, threads=1, jobs=2))


preset(Preset("readme-memorise", "the score-embedding paper's memorisation protocol at small scale: one image "
              "(a photo, a digit) to memorise; its published pipeline (--fp-variant paper) against itself without "
              "the embedding and plain DSM (the bigger-batch controls left out: the claim is the embedding's); a "
              "U-Net of 16 channels, batch 16, Adam 1e-3 without warm-up, the paper's VE SDE g = 5^t and 1/(2 g^2) "
              "weighting for every variant; samples start from the exact x_T law (a Gaussian prior fitted at T) "
              "and are scored by their best-match SSIM",
              data=("photos32", "digits32"), n_data=(1,), methods="fp-embed,-batch-2x,-batch-4x",
              budget="1200steps", seeds=3, threads=1, jobs=2,
              settings={"arch": "unet", "width": 16, "batch_size": 16, "lr": 1e-3, "warmup": 0, "ema": 0.999,
                        "sde": "ve-power", "weighting": "inv_g2", "prior": "gaussian", "prior_fit": "before",
                        "fp_variant": "paper"},
              evaluation={"nll_n": 1, "nll_steps": 20, "samples": 8, "sample_steps": 50, "points": 9}))


preset(Preset("readme-images", "plain DSM, the default recipe and every other registered recipe (EDM's) training a "
              "U-Net on 8x8 digits and 28x28 MNIST, scored by the standard FID of 1,000 samples against the held-out "
              "images (needs scorefast[fid]; hours on a CPU, minutes on a GPU); each recipe trains at its own "
              "batch size",
              data=("digits", "mnist"), methods="baselines,recipes", budget="2000steps", seeds=3, threads=1,
              settings={"arch": "unet"},
              evaluation={"nll_n": 500, "nll_steps": 50, "samples": 1000, "sample_steps": 50, "points": 6,
                          "metric": "fid"}))


preset(Preset("readme-images-cpu", "readme-images at the size of a 2-core CPU: 8x8 digits, 600 steps, the curves "
              "scored by the digits Frechet distance of 500 samples (the standard FID of the final models beside "
              "them, from scorefast evaluate --metric fid)",
              data=("digits",), methods="baselines,recipes", budget="600steps", seeds=3, threads=1, jobs=2,
              evaluation={"nll_n": 300, "nll_steps": 40, "samples": 500, "sample_steps": 40, "points": 4}))


# the curves of MNIST at the size of a 2-core CPU, shared by its studies so that their plain and default runs and
# curves are one (the same flags, budget and protocol: a study reuses another's runs and cached points)
MNIST_CPU_EVALUATION = {"nll_n": 32, "nll_steps": 20, "samples": 300, "sample_steps": 20, "points": 5,
                        "target": "metric", "refine": 3}

preset(Preset("readme-images-mnist-cpu", "readme-images on 28x28 MNIST at the size of a 2-core CPU: what "
              "scorefast train --data mnist trains (its own run size, every recipe at that batch), the curves "
              "scored by the digits Frechet distance of 300 samples (20 RK4 steps) and the held-out NLL of 32 images "
              "(Hutchinson, 20 RK4 steps) beside it, each seed's target set on plain's final digits Frechet distance "
              "(at 784 dimensions the NLL a 2-core CPU affords is biased by its few steps; a point of the digits "
              "protocol costs about ten minutes of one thread), 3 rounds of narrowing where a curve meets it (the 5 "
              "points are 9 snapshots apart there)",
              data=("mnist",), methods="baselines,recipes", budget=f"{MNIST_RUN['steps']}steps", seeds=3, threads=1,
              jobs=2, settings={"batch_size": MNIST_RUN["batch_size"]}, evaluation=MNIST_CPU_EVALUATION))


IMAGE_METHODS = "trunc-gaussian,-t1-likelihood,intervals-2,empirical,-batch-4x"
IMAGE_AND_COUPLINGS = f"{IMAGE_METHODS},coupling-minibatch-ot,coupling-immiscible"

preset(Preset("readme-images-methods-cpu", "the methods on top of the default recipe, each beside its control on "
              "top of it, training the trainer's U-Net on 8x8 digits at the size of a 2-core CPU (600 steps, the "
              "protocol of readme-images-cpu): T = 0.6 bridged by a Gaussian prior fitted at T against T = 1 with "
              "fewer large-t draws; two interval networks against one with their time allocation at twice the "
              "batch; the empirical target against twice the batch (512); the minibatch-OT and immiscible noise "
              "couplings against the default recipe itself (the independent coupling); plain DSM stays the "
              "reference of every time to target",
              data=("digits",), methods=IMAGE_AND_COUPLINGS, budget="600steps", seeds=3, T=(0.6,), threads=1, jobs=2,
              base_recipe=DEFAULT_RECIPE,
              evaluation={"nll_n": 300, "nll_steps": 40, "samples": 500, "sample_steps": 40, "points": 4}))

preset(Preset("readme-images-methods-mnist-cpu", "the methods of readme-images-methods-cpu (the couplings aside) "
              "on 28x28 MNIST at the size of readme-images-mnist-cpu, whose plain and default runs and curves it "
              "shares: every run what scorefast train --data mnist trains, each method and its control on top of "
              "the default recipe, each seed's target plain's final digits Frechet distance of 300 samples",
              data=("mnist",), methods=IMAGE_METHODS, budget=f"{MNIST_RUN['steps']}steps", seeds=3, T=(0.6,),
              threads=1, jobs=2, settings={"batch_size": MNIST_RUN["batch_size"]}, base_recipe=DEFAULT_RECIPE,
              evaluation=MNIST_CPU_EVALUATION))

preset(Preset("readme-images-methods", "readme-images-methods-cpu at GPU size: the same methods and controls on top "
              "of the default recipe, on 8x8 digits and 28x28 MNIST, 2,000 steps, scored by the standard FID of "
              "1,000 samples against the held-out images (needs scorefast[fid])",
              data=("digits", "mnist"), methods=IMAGE_AND_COUPLINGS, budget="2000steps", seeds=3, T=(0.6,), threads=1,
              settings={"arch": "unet"}, base_recipe=DEFAULT_RECIPE,
              evaluation={"nll_n": 500, "nll_steps": 50, "samples": 1000, "sample_steps": 50, "points": 6,
                          "metric": "fid"}))


def get_preset(name: str) -> Preset:
    """The preset ``name``; one line listing the presets otherwise."""
    return PRESETS.get(name)


__all__ = ["PRESETS", "Preset", "get_preset", "preset"]
