"""The named choices of the engine, the networks, the data and the metrics, declared with their help.

Their implementations import torch, but the command line, the configuration's checks and the
documentation list the names without it: each registry declares its names here, and the module that
implements them registers each object under its declared name (``SAMPLERS.add("ode", sample_ode)``);
a registry imports that module when one of its objects is first asked for. The data sets and the
metrics are names the loaders and the evaluator dispatch on (no object each). The plug-in slots
(targets, priors, partitions, time samplers, weightings, couplings, EMA profiles, learning-rate
schedules) import nothing heavy and keep their registries beside their classes.
"""

from __future__ import annotations

from .registry import Registry

SDES = Registry("SDE", flag="sde", title="forward SDE", default="vp", module="scorefast.sde")
SDES.declare("vp", "variance preserving, beta 0.1..20")
SDES.declare("subvp", "sub-VP: the VP drift with less noise")
SDES.declare("ve", "variance exploding, geometric 0.01..50")
SDES.declare("vp-psm", "VP with beta = 2ct, c = 5")
SDES.declare("ve-power", "VE with g = 5^t, the score-embedding code's")

SAMPLERS = Registry("sampler", flag="sampler", title="sampler", default="ode", module="scorefast.sampling")
SAMPLERS.declare("ode", "probability flow, RK4", probability_flow=True)
SAMPLERS.declare("em", "Euler-Maruyama")
SAMPLERS.declare("pc", "predictor-corrector")
SAMPLERS.declare("dpmpp-2m", "DPM-Solver++(2M)", probability_flow=True)
SAMPLERS.declare("heun", "EDM's", probability_flow=True)
SAMPLERS.declare("euler-a", "Euler ancestral")

SCHEDULES = Registry("schedule", flag="schedule", title="time grid of a sampler", module="scorefast.ksampling")
SCHEDULES.declare("uniform", "uniform in t")
SCHEDULES.declare("karras", "uniform in sigma^(1/7), EDM's")
SCHEDULES.declare("logsnr", "uniform in the log noise level")

PARAMETERISATIONS = Registry("parameterisation", flag="param", title="network output", default="eps",
                             module="scorefast.nets")
PARAMETERISATIONS.declare("eps", "the noise")
PARAMETERISATIONS.declare("score", "the score")
PARAMETERISATIONS.declare("data", "the clean example x0")
PARAMETERISATIONS.declare("edm", "EDM's preconditioned denoiser")

NET_PRESETS = Registry("network preset", flag="net_preset", title="U-Net preset")
NET_PRESETS.add("cifar10", {"width": 128, "channel_mults": (1, 2, 2, 2), "res_blocks": 2, "attention": (16,),
                            "dropout": 0.1},
                "DDPM's CIFAR-10 settings, 23.8 M parameters (DDPM's own has 35.7 M: an up block more per level, "
                "a second middle block, learned upsampling, a 512-wide time embedding)")

DATASETS = Registry("data set", flag="data", title="built-in data set", default="moons")
for _name, _help in (("moons", "two interleaved half circles"), ("8gaussians", "eight Gaussians on a circle"),
                     ("checkerboard", "a uniform 8x8 checkerboard in [-4, 4]^2"), ("swissroll", "a 2-D swiss roll"),
                     ("pinwheel", "five curved arms"), ("rings", "four concentric rings"),
                     ("offcentre", "three Gaussians far from the origin"),
                     ("hashgrid", "four thin bars drawing a '#' and five Gaussians (Haxholli & Lorenzi 2023)"),
                     ("sharpbroad", "a broad Gaussian amid sharp ones (Haxholli & Lorenzi 2023)"),
                     ("gaussian2d", "one correlated Gaussian, whose score and likelihood are exact")):
    DATASETS.declare(_name, _help, kind="points")
MNIST_RUN = {"steps": 600, "batch_size": 64, "eval_every": 600, "eval_samples": 500}
"""mnist's own run when no run size is given (``config.recipes.data_defaults``): chosen to train, sample and score
in 10 minutes on 2 CPU cores (docs/recipes.md)."""
MNIST_FID = 256
"""Final samples of an mnist run scored by the standard FID (with scorefast[fid]; ``training.recipe.final_fid``)."""
for _name, _help, _tags in (
        ("digits", "scikit-learn's 1,797 8x8 digits, 17 levels", {}),
        ("digits32", "the same digits resized to 32x32", {}),
        ("photos32", "eight 32x32 grayscale crops of scikit-learn's two photos", {}),
        ("mnist", f"5,000 real 28x28 MNIST digits (needs scorefast[mnist]); unless --steps, --batch-size or "
         f"--time-budget is given, {MNIST_RUN['steps']} steps of batch {MNIST_RUN['batch_size']} evaluated once at "
         f"the end on {MNIST_RUN['eval_samples']} samples (about 10 minutes on 2 CPU cores), and the standard FID of "
         f"{MNIST_FID} of them with scorefast[fid]", {"run": MNIST_RUN, "fid_samples": MNIST_FID})):
    DATASETS.declare(_name, _help, kind="image", **_tags)

METRICS = Registry("metric", flag="metric", title="sample-quality metric")
METRICS.declare("swd", "sliced Wasserstein distance (any data)")
METRICS.declare("mmd", "MMD^2 with Gaussian kernels of fixed bandwidths (any data)")
METRICS.declare("digits_fd", "Frechet distance in the features of a small classifier of the 8x8 digits (digit "
            "images, resampled to 8x8; seconds, the periodic metric of digits and mnist)")
METRICS.declare("ssim_gap", "1 - the mean best-match SSIM to the reference images (a few images to memorise)")
METRICS.declare("fid", "the standard FID: Frechet distance of TF-Inception features (images; needs "
            "scorefast[fid]; about 0.25 s an image on 2 CPU cores; biased upward below 2,048 samples, so compare "
            "only equal n)", inception=True)
METRICS.declare("kid", "Kernel Inception Distance from the same features (images; needs scorefast[fid]; "
            "unbiased at any n)", inception=True)

__all__ = ["DATASETS", "METRICS", "NET_PRESETS", "PARAMETERISATIONS", "SAMPLERS", "SCHEDULES", "SDES"]
