"""Time grids for integrating an SDE or ODE, and their alignment to the edges of piecewise models.

Piecewise models (parallel score matching) expose ``edges`` (increasing times) and ``piece(k)`` (the
score model on [edges[k], edges[k+1]]). Every integration splits its grid at those edges with
:func:`pieces`: each fixed step lies inside one piece, an adaptive solver restarts at each edge. A plain
model is one piece.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .sde import ScoreFn

Tensor = torch.Tensor


def time_grid(t_start: float, t_end: float, steps: int, edges: Sequence[float] | None = None,
              device=None, dtype: torch.dtype | None = None) -> Tensor:
    """``steps`` uniform steps from t_start to t_end (either direction), with every edge strictly
    between them placed exactly on the grid (each piece gets steps in proportion to its length).
    The grid is built in float64 and cast to ``dtype`` (default: torch's default dtype)."""
    if steps < 1:
        raise ValueError(f"need at least one step, got {steps}")
    lo, hi = sorted((float(t_start), float(t_end)))
    knots = [lo] + sorted(e for e in (edges or ()) if lo < e < hi) + [hi]
    lengths = [b - a for a, b in zip(knots[:-1], knots[1:])]
    counts = [max(1, round(steps * ln / (hi - lo))) for ln in lengths]
    parts = [torch.linspace(a, b, n + 1, dtype=torch.float64)[:-1] for a, b, n in zip(knots[:-1], knots[1:], counts)]
    grid = torch.cat(parts + [torch.tensor([hi], dtype=torch.float64)])
    if t_start > t_end:
        grid = grid.flip(0)
    return grid.to(device=device, dtype=dtype or torch.get_default_dtype())


def pieces(model: ScoreFn, ts: Tensor) -> list[tuple[ScoreFn, Tensor]]:
    """Split the grid ``ts`` at the model's edges: [(score model of the piece, its sub-grid)].

    Raises if an edge inside the grid's range is not a grid point (no step may cross an edge), or if
    the grid reaches outside [edges[0], edges[-1]], where the model has no piece. Grid points match
    edges up to the rounding of the grid's dtype (a float32 grid holds float32(edge)).
    """
    edges = getattr(model, "edges", None)
    if edges is None:
        return [(model, ts)]
    out = []
    lo, hi = float(ts.min()), float(ts.max())
    edges = [float(e) for e in edges]
    tol = 8 * torch.finfo(ts.dtype).eps * max(1.0, abs(hi))
    if lo < edges[0] - tol or hi > edges[-1] + tol:
        raise ValueError(f"time grid [{lo}, {hi}] reaches outside the model's edges [{edges[0]}, {edges[-1]}]")
    for k in range(len(edges) - 1):
        a, b = max(edges[k], lo), min(edges[k + 1], hi)
        if b - a <= tol:
            continue
        mask = (ts >= a - tol) & (ts <= b + tol)
        sub = ts[mask]
        if sub.numel() < 2 or abs(float(sub.min()) - a) > tol or abs(float(sub.max()) - b) > tol:
            raise ValueError(f"time grid is not aligned to the edge(s) of piece {k} [{a}, {b}]; "
                             "build it with time_grid(..., edges=model.edges)")
        out.append((model.piece(k), sub))
    if ts[0] > ts[-1]:
        out.reverse()
    return out


__all__ = ["pieces", "time_grid"]
