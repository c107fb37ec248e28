"""Every picture, drawn from arrays that live in a run directory (so any run can be re-plotted)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def _save(fig, path: str | Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=110,
                                             bbox_inches="tight"))
    plt.close(fig)


def image_grid(images: np.ndarray, ncol: int | None = None) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (H', W', C) array in [0, 1] with 1-pixel gaps."""
    images = np.clip((np.asarray(images) + 1) / 2, 0, 1)
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c))
    for i, im in enumerate(images):
        r, q = divmod(i, ncol)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = im.transpose(1, 2, 0)
    return grid


def plot_samples(samples: np.ndarray, path: str | Path, reference: np.ndarray | None = None,
                 title: str = "samples") -> None:
    """A density plot for points (2-D: the first two coordinates; 1-D: a histogram) beside the reference data,
    an image grid for images."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        grid = image_grid(samples[:64])
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(title)
        _save(fig, path)
        return
    pts = samples.reshape(len(samples), -1)[:, :2]
    panels = [(pts, title)] + ([(np.asarray(reference).reshape(len(reference), -1)[:, :2], "data")]
                               if reference is not None else [])
    lo = np.percentile(np.concatenate([p for p, _ in panels]), 0.5, axis=0)
    hi = np.percentile(np.concatenate([p for p, _ in panels]), 99.5, axis=0)
    pad = 0.1 * (hi - lo)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    box = list(zip(lo - pad, hi + pad))
    for ax, (p, name) in zip(axes[0], panels):
        if p.shape[1] == 1:
            ax.hist(p[:, 0], bins=120, range=box[0], density=True, color="C1")
        else:
            ax.hist2d(p[:, 0], p[:, 1], bins=120, range=box, cmap="magma")
            ax.set_aspect("equal")
        ax.set_title(f"{name} (n={len(p)})")
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def plot_metrics(rows: list[dict], path: str | Path) -> None:
    """Training loss and the evaluation metric against wall-clock seconds, from the rows of metrics.jsonl."""
    rows = [r for r in rows if isinstance(r.get("wall"), (int, float))]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    loss = [(r["wall"], r["loss"]) for r in rows if r.get("loss") is not None]
    if loss:
        axes[0].plot(*zip(*loss), lw=1)
        axes[0].set_yscale("log")
    axes[0].set_xlabel("training wall-clock [s]")
    axes[0].set_ylabel("loss (EMA of batches)")
    evals = [(r["wall"], r["metric"]) for r in rows if r.get("metric") is not None]
    if evals:
        axes[1].plot(*zip(*evals), "o-")
        axes[1].set_ylabel(rows[-1].get("metric_name", "metric"))
    axes[1].set_xlabel("training wall-clock [s]")
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(rows: list[dict], path: str | Path, title: str = "") -> None:
    """NLL and ELBO parts, sample quality and sampling cost against the end time T."""
    Ts = [r["T"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(Ts, [r["nll_nats"] for r in rows], "o-", label="NLL (PF-ODE + prior)")
    axes[0].plot(Ts, [-r["elbo"] for r in rows], "s--", label="-ELBO")
    axes[0].plot(Ts, [-r["prior_term"] for r in rows], ":", label="-prior term")
    axes[0].plot(Ts, [-(r["score_term"] + r["theta_free"]) for r in rows], ":", label="-(score + theta-free terms)")
    axes[0].set_xlabel("T")
    axes[0].set_ylabel("nats")
    axes[0].legend(fontsize=7)
    axes[1].plot(Ts, [r["metric"] for r in rows], "o-")
    axes[1].set_xlabel("T")
    axes[1].set_ylabel(rows[0]["metric_name"])
    axes[2].plot(Ts, [r["sample_steps"] for r in rows], "o-")
    axes[2].set_xlabel("T")
    axes[2].set_ylabel("sampler steps (same step size)")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_fp(axes_: list[np.ndarray], t: np.ndarray, logp: np.ndarray, score: np.ndarray, path: str | Path,
            n_times: int = 4) -> None:
    """log p_t and the score field of a Fokker-Planck solution at a few times (1-D: curves; 2-D: image
    and arrows; 3-D: the middle slice along the last axis)."""
    idx = np.unique(np.linspace(0, len(t) - 1, n_times).round().astype(int))
    d = len(axes_)
    fig, axs = plt.subplots(1, len(idx), figsize=(3.6 * len(idx), 3.4), squeeze=False)
    for ax, n in zip(axs[0], idx):
        if d == 1:
            ax.plot(axes_[0], logp[n], label="log p")
            ax.plot(axes_[0], score[n, :, 0], label="score")
            ax.legend(fontsize=7)
        else:
            lp, sc = logp[n], score[n]
            if d == 3:
                mid = lp.shape[-1] // 2
                lp, sc = lp[..., mid], sc[..., mid, :2]
            x, y = axes_[0], axes_[1]
            ax.imshow(lp.T, origin="lower", extent=(x[0], x[-1], y[0], y[-1]), cmap="viridis",
                      vmin=max(lp.min(), lp.max() - 12), aspect="auto")
            step = max(1, len(x) // 16)
            X, Y = np.meshgrid(x[::step], y[::step], indexing="ij")
            ax.quiver(X, Y, sc[::step, ::step, 0], sc[::step, ::step, 1], color="white", scale=None, width=0.004)
        ax.set_title(f"t = {t[n]:.3g}")
    fig.suptitle("log p_t (colour) and its score (arrows)" if d > 1 else "log p_t and its score")
    fig.tight_layout()
    _save(fig, path)


def _band(seeds: list[list[tuple[float, float]]], points: int = 200):
    """(grid, median, low, high) of seed curves on a common wall-clock grid (where every seed has values)."""
    lo = max(c[0][0] for c in seeds)
    hi = min(c[-1][0] for c in seeds)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, points)
    values = np.stack([np.interp(grid, *np.asarray(c, dtype=float).T) for c in seeds])
    return grid, np.median(values, axis=0), values.min(axis=0), values.max(axis=0)


def plot_quality_curves(panels: list[tuple[str, dict[str, list[list[tuple[float, float]]]]]], path: str | Path,
                        title: str = "") -> None:
    """Quality against training wall-clock, one panel per measure: one line per variant (the median over seeds
    on their common time range), the seeds' spread shaded; a single seed is drawn as its own curve."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        values = [v for seeds in series.values() for c in seeds for _, v in c]
        finals = [c[-1][1] for seeds in series.values() for c in seeds if c]
        for k, (name, seeds) in enumerate(series.items()):
            seeds = [c for c in seeds if c]
            if not seeds:
                continue
            colour = plt.cm.tab20(k % 20) if len(series) > 10 else f"C{k}"
            band = _band(seeds) if len(seeds) > 1 else None
            if band is None:
                for i, c in enumerate(seeds):
                    ax.plot(*zip(*c), "o-", ms=3, lw=1.2, color=colour, label=name if i == 0 else None)
                continue
            grid, mid, low, high = band
            ax.plot(grid, mid, lw=1.5, color=colour, label=name)
            ax.fill_between(grid, low, high, color=colour, alpha=0.18, lw=0)
        if finals:  # the early, poor values would flatten the end of training, where the variants differ
            low, high = min(values), max(finals)
            ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 1.5 * (high - low + 1e-9))
        ax.set_xlabel("training wall-clock [s] (precomputation included)")
        ax.set_ylabel(f"{ylabel} (lower is better)")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_sample_panels(panels: list[tuple[str, np.ndarray]], path: str | Path, columns: int = 6) -> None:
    """Samples of several variants side by side: scatter plots for points (on one shared box), image grids for
    images."""
    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    points = [np.asarray(x).reshape(len(x), -1)[:, :2] for _, x in panels if np.asarray(x).ndim != 4]
    if points:
        every = np.concatenate(points)
        lo, hi = np.percentile(every, 0.5, axis=0), np.percentile(every, 99.5, axis=0)
        pad = 0.1 * (hi - lo)
        box = [[lo[0] - pad[0], hi[0] + pad[0]], [lo[1] - pad[1], hi[1] + pad[1]]]
    for ax, (name, x) in zip(axes.flat, panels):
        x = np.asarray(x)
        if x.ndim == 4:
            grid = image_grid(x[:36])
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        else:
            p = x.reshape(len(x), -1)[:, :2]
            ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.5, lw=0)
            ax.set_xlim(box[0])
            ax.set_ylim(box[1])
            ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    _save(fig, path)


def plot_T_tradeoff(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: str | Path,
                    title: str = "") -> None:
    """Measures against the end time T, one panel per measure and one line per prior at T (the point at T = 1
    is plain DSM with the standard prior)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    names = list(dict.fromkeys(name for _, series in panels for name in series))
    for ax, (ylabel, series) in zip(axes[0], panels):
        for name, pts in series.items():
            pts = sorted(pts)
            ax.plot(*zip(*pts), "o-" if len(pts) > 1 else "s", label=name, color=f"C{names.index(name) % 10}")
        ax.set_xlabel("end time T")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_data_efficiency(series: dict[str, list[tuple[int, float]]], path: str | Path, ylabel: str,
                         title: str = "") -> None:
    """A final quality against the number of training examples, one line per variant."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series.items():
        ax.plot(*zip(*sorted(pts)), "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("examples (--n-data)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
