"""EDM2's post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion
models", section 3 and appendix C.2): choose the length of the weight average after training.

A power-function EMA with exponent gamma (``--ema-profile power``) averages the weights of steps tau <= t
with the profile p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1); its relative standard deviation sigma_rel
(``schedules.power_std``) is the fraction of the run it spans. With ``--posthoc-ema-every N`` a run tracks
two such averages (sigma_rel 0.05 and 0.10) and keeps both every N steps and after the last
(``posthoc/net-K-STEP.pt``). Any other sigma_rel at the last step is then a linear combination of the
stored averages: the coefficients x minimise the L2 distance between sum_i x_i p_i and the wanted profile,
i.e. solve A x = b with A_ij = <p_i, p_j> and b_i = <p_i, p>, inner products in closed form
(:func:`profile_inner`). The discrete average kept by ``optim.EMA`` is exactly this profile integrated over
each step, so the reconstruction is as good as the profile fit (``residual``), which is how the range of
sigma_rel a run can represent is judged.

    scorefast ema --run runs/digits --sigma-rel 0.07     # writes runs/digits/ema/net-0-sigma0.07.pt
    scorefast sample --run runs/digits --sigma-rel 0.07 --n 64 --out s.npy
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config.schedules import power_gamma, power_std
from .errors import UserError
from .run import RunDir

MAX_RESIDUAL = 0.05  # largest relative L2 error of the reconstructed profile that counts as representable
_STD_LIMIT = power_std(0.0)  # sqrt(1/12): the uniform average over the whole run, the widest profile of --ema-std


def profile_inner(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_a, p_b> = int_0^min(t_a, t_b) p_a p_b dtau for power profiles ending at steps t_a and t_b (broadcast):
    (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) max(t_a, t_b)) (min / max)^gamma_of_the_longer."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    longer = np.where(t_a < t_b, gamma_b, gamma_a)
    hi = np.maximum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) / ((gamma_a + gamma_b + 1) * hi) * (np.minimum(t_a, t_b) / hi) ** longer


@dataclass
class Fit:
    """Coefficients of the stored averages for one wanted profile, and the relative L2 error of the fit."""

    coefficients: np.ndarray
    residual: float


def fit_profile(steps, stds, step: float, sigma_rel: float) -> Fit:
    """Least-squares coefficients of stored averages (ending at ``steps``, with relative widths ``stds``) that
    reproduce the power profile of ``sigma_rel`` ending at ``step``."""
    steps, stds = np.broadcast_arrays(np.asarray(steps, dtype=np.float64), np.asarray(stds, dtype=np.float64))
    gammas = np.array([power_gamma(float(s)) for s in stds])
    gamma = power_gamma(float(sigma_rel))
    a = profile_inner(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = profile_inner(steps, gammas, step, gamma)
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    norm2 = float(profile_inner(step, gamma, step, gamma))
    error2 = max(0.0, norm2 - 2 * float(x @ b) + float(x @ a @ x))
    return Fit(x, (error2 / norm2) ** 0.5)


def representable(steps, stds, step: float, grid: int = 200) -> tuple[float, float] | None:
    """The interval of sigma_rel whose profile at ``step`` the stored averages reproduce within MAX_RESIDUAL
    (scanned on a log grid; None when no value is)."""
    candidates = np.geomspace(1e-3, _STD_LIMIT * 0.999, grid)
    good = [float(s) for s in candidates if fit_profile(steps, stds, step, s).residual <= MAX_RESIDUAL]
    return (good[0], good[-1]) if good else None


_SNAPSHOT = re.compile(r"net-(?P<index>.+)-(?P<step>\d{8})\.pt")


def snapshots(run: RunDir, index: int | str) -> list[Path]:
    """The post-hoc EMA snapshot files of one network, by step."""
    folder = run.path / "posthoc"
    found = [p for p in folder.glob(f"net-{index}-*.pt") if (m := _SNAPSHOT.fullmatch(p.name))
             and m["index"] == str(index)] if folder.is_dir() else []
    return sorted(found)


def combine(states: list[list[dict]], coefficients: np.ndarray) -> dict:
    """sum_i x_i theta_i over the stored averages (flattened in the order of the coefficients); a tensor that is
    the same in all of them (a buffer the EMA copies, such as EDM's sigma_data) is kept as it is."""
    flat = [sd for per_step in states for sd in per_step]
    out = {}
    for key, last in flat[-1].items():
        if all(torch.equal(sd[key], last) for sd in flat):
            out[key] = last.clone()
            continue
        total = torch.zeros_like(last, dtype=torch.float64)
        for x, sd in zip(coefficients, flat):
            total += float(x) * sd[key].double()
        out[key] = total.to(last.dtype)
    return out


def reconstruct(path: str | Path, sigma_rel: float, overwrite: bool = False) -> list[Path]:
    """Write the weights of a power EMA of relative width ``sigma_rel`` at the last snapshot of every network of
    the run in ``path`` (``ema/net-K-sigma<sigma_rel>.pt``, read by ``open_run(..., sigma_rel=...)``); returns
    the files written. Refuses, before writing anything, a run without snapshots, a sigma_rel the snapshots
    cannot represent, and an existing file unless ``overwrite``."""
    run = RunDir(path)
    cfg = run.read_config()
    if not 0 < sigma_rel < _STD_LIMIT:
        raise UserError(f"--sigma-rel must be in (0, {_STD_LIMIT:.4f}), got {sigma_rel}")
    plans = []
    for index in range(len(cfg.edges(cfg.sde.build())) - 1):
        files = snapshots(run, index)
        if not files:
            raise UserError(f"run directory '{run.path}' has no post-hoc EMA snapshots of network {index} (train "
                            "with --posthoc-ema-every N to keep them)")
        states = [load_checkpoint(p) for p in files]
        steps = np.repeat([float(s["step"]) for s in states], [len(s["stds"]) for s in states])
        stds = np.concatenate([np.asarray(s["stds"], dtype=np.float64) for s in states])
        last = float(states[-1]["step"])
        fit = fit_profile(steps, stds, last, sigma_rel)
        if fit.residual > MAX_RESIDUAL:
            span = representable(steps, stds, last)
            where = f"{span[0]:.3f}-{span[1]:.3f}" if span else "none"
            raise UserError(f"--sigma-rel {sigma_rel} is outside what the {len(files)} snapshots of network {index} "
                            f"can represent (profile error {fit.residual:.0%}; representable: {where})")
        out = run.posthoc_ema(index, sigma_rel)
        if out.exists() and not overwrite:
            raise UserError(f"'{out}' already exists; give --overwrite to replace it")
        plans.append((out, states, fit, int(last)))
    written = []
    for out, states, fit, last in plans:
        out.parent.mkdir(exist_ok=True)
        save_checkpoint(out, {"ema": combine([s["emas"] for s in states], fit.coefficients), "sigma_rel": sigma_rel,
                              "step": last, "residual": fit.residual, "snapshots": len(states)})
        written.append(out)
    return written


__all__ = ["Fit", "MAX_RESIDUAL", "combine", "fit_profile", "profile_inner", "reconstruct", "representable",
           "snapshots"]
