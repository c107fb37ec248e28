"""Partitions of the diffusion time, one registered plug-in each (parallel score matching, Haxholli & Lorenzi 2023).

A partition says how many networks a run trains and on which times: ``single`` (one network on
[eps, T]), ``intervals`` (K networks on K intervals split by a spacing rule), ``edges`` (intervals at
explicit edges) and ``per-time-point`` (N time-unconditioned networks, each trained at one time). It
is selected by the flag given: ``--intervals K`` (K >= 2), ``--edges a,b,...`` or ``--per-time-point N``;
none of them means one network. It yields the jobs (one per network) and assembles the trained
networks into one model; the mathematics (spacings, the piecewise model) is in ``piecewise``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import UserError
from ..registry import Plugin, Registry, flag_of, option

if TYPE_CHECKING:
    from torch import nn

    from ..sde import SDE

PARTITIONS = Registry("partition", title="partition of time (parallel score matching)", default="single")


@dataclass
class Job:
    """One network of a run: its index, its time range and, for a per-time-point network, its time."""

    index: int | str
    t_min: float
    t_max: float
    fixed_t: float | None = None


class Partition(Plugin):
    """Base of the partitions: the edges, one job per interval, and the assembled model."""

    piecewise: ClassVar[bool] = True
    time_conditioned: ClassVar[bool] = True
    warm_start: int = 0

    def edges(self, sde: SDE, times=None) -> list[float]:
        """The interval edges on [eps, T]; ``times`` is the run's time sampler on [eps, T] (for edges that
        follow the time allocation)."""
        raise NotImplementedError

    def jobs(self, edges: list[float]) -> list[Job]:
        return [Job(k, edges[k], edges[k + 1]) for k in range(len(edges) - 1)]

    def assemble(self, nets: list[nn.Module], edges: list[float]) -> nn.Module:
        from .piecewise import assemble
        return assemble(nets, edges)

    def check_steps(self, edges: list[float], steps: int | None) -> None:
        """Every network must get at least one of ``steps`` steps."""
        from .piecewise import check_partition
        if steps is not None:
            check_partition(edges, steps)


@dataclass
class WarmStartOption:
    """Option of the partitions whose networks can start from one briefly trained shared network."""

    warm_start: int = option(0, "train a shared network this many steps first, then split it into the intervals",
                             min=0)


@PARTITIONS.register("single")
@dataclass
class Single(Partition):
    """One network on [eps, T]."""

    piecewise: ClassVar[bool] = False

    def edges(self, sde, times=None):
        return [sde.eps, sde.T]

    def assemble(self, nets, edges):
        return nets[0]


@PARTITIONS.register("intervals")
@dataclass
class Intervals(WarmStartOption, Partition):
    """K networks on K intervals of [eps, T], split by the spacing rule."""

    intervals: int = option(2, "parallel score matching: number of time intervals, one network each", selects=True)
    partition: str = option("logsnr", "how --intervals splits [eps, T]: allocation (each network an equal share of "
                            "the time sampler's draws), logsnr (equal in log-SNR) or equal (equal in t)",
                            choices=("allocation", "logsnr", "equal"))

    def validate(self):
        super().validate()
        if self.intervals < 2:
            raise UserError(f"--intervals must be >= 2 for interval networks, got {self.intervals} (omit it for one "
                            "network)")

    def edges(self, sde, times=None):
        from .piecewise import check_partition, partition
        if self.partition != "allocation":
            return partition(self.partition, self.intervals, sde.eps, sde.T, sde)
        import torch
        inner = times.quantile(torch.arange(1, self.intervals, dtype=torch.float64) / self.intervals)
        return check_partition([sde.eps, *inner.tolist(), sde.T])


@PARTITIONS.register("edges")
@dataclass
class Edges(WarmStartOption, Partition):
    """Intervals at explicit edges."""

    edges_text: str = option("0,0.1,1", "explicit interval edges, e.g. 0,0.02,0.1,0.3,1 (0 stands for eps)",
                             flag="edges", selects=True)

    def edges(self, sde, times=None):
        from .piecewise import parse_edges
        return parse_edges(self.edges_text, sde.eps, sde.T)


@PARTITIONS.register("per-time-point")
@dataclass
class PerTimePoint(Partition):
    """N time-unconditioned networks, network k trained at the single time edges[k+1] (the paper's DPSM)."""

    time_conditioned: ClassVar[bool] = False
    per_time_point: int = option(2, "N time-unconditioned networks, one per time point (the paper's extreme case)",
                                 selects=True, min=1)

    def edges(self, sde, times=None):
        from .piecewise import partition
        return partition("equal", self.per_time_point, sde.eps, sde.T, sde)

    def jobs(self, edges):
        return [Job(k, edges[k], edges[k + 1], fixed_t=edges[k + 1]) for k in range(len(edges) - 1)]

    def assemble(self, nets, edges):
        from .piecewise import assemble
        return assemble(nets, edges, per_time_point=True)


def select_partition(given: dict) -> str:
    """The partition that a set of flags selects: the one whose selecting option is given (--intervals K >= 2,
    --edges, --per-time-point); none of them, or --intervals 1, means one network."""
    chosen = {}
    for name in PARTITIONS.names():
        for f in dataclasses.fields(PARTITIONS.get(name)):
            if f.metadata.get("selects") and given.get(flag_of(f)) is not None:
                chosen[name] = flag_of(f)
    if len(chosen) > 1:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in chosen.values())
        raise UserError(f"give only one of the partition flags, got {flags}")
    if chosen == {"intervals": "intervals"} and given["intervals"] == 1:
        return "single"
    return next(iter(chosen), "single")


__all__ = ["Edges", "Intervals", "Job", "PARTITIONS", "Partition", "PerTimePoint", "Single", "select_partition"]
