"""What every network of a run shares (``RunContext``), checked before anything is written (``context``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config
from ..data import Dataset, ToModel
from ..errors import UserError
from ..evaluate import check_metric
from ..run import RunDir, new_model, resolve_device, split_data
from ..sde import SDE
from . import launcher
from .systems import check_compile


@dataclass
class RunContext:
    """What every network of a run shares: configuration, directory, SDE, edges, data, device, and the
    data's standard deviation (EDM's sigma_data: --sigma-data, else measured on the training data)."""

    cfg: Config
    run: RunDir
    sde: SDE
    edges: list[float]
    train: Dataset
    test: Dataset
    device: torch.device

    @property
    def to_model(self) -> ToModel:
        """The conversion of every stored training batch to model space (dequantisation, flips)."""
        return ToModel(self.train.levels, bool(self.cfg.data.dequantise), bool(self.cfg.data.xflip))

    @property
    def sigma_data(self) -> float:
        given = self.cfg.data.sigma_data
        return float(given) if given is not None else self.train.std() or 1.0



def context(cfg: Config, run: RunDir) -> RunContext:
    """Check everything a run needs (data, partition, target, layout) without writing anything; the
    configuration was resolved for the kind of data it reads."""
    train, test = split_data(cfg)
    if train.kind != cfg.data_kind:
        raise UserError(f"data '{cfg.data.spec}' holds {train.kind} data, but the configuration was resolved for "
                        f"{cfg.data_kind} data (was the file replaced?)")
    cfg.validate()
    if cfg.launch.compile:
        check_compile()
    cfg = data_options(cfg, train)
    if cfg.optim.batch_size > len(train) and len(train) >= 10:
        raise UserError(f"--batch-size {cfg.optim.batch_size} is larger than the {len(train)} training examples of "
                        f"'{cfg.data.spec}'")
    sde = cfg.sde.build()
    edges = cfg.edges(sde)
    cfg.partition.check_steps(edges, cfg.budget.max_steps)
    if len(train) < 2 and hasattr(cfg.time_sampler.bind(sde, edges[0], edges[-1]), "update"):
        raise UserError(f"data '{cfg.data.spec}': one example, but --time-sampler {cfg.time_sampler.name} keeps a "
                        "probe set out of training, which would leave none; use more data or --time-sampler uniform")
    cfg.target.check(train.shape)
    with torch.device("meta"):  # the network's options are checked without allocating it
        shapes = new_model(cfg, sde, train.shape, cfg.partition.time_conditioned)
    run.check_weights(shapes)
    if cfg.launch.workers > 1:
        launcher.layout(cfg.launch.workers, len(edges) - 1)
    return RunContext(cfg, run, sde, edges, train, test, resolve_device(cfg.launch.device))


def data_options(cfg: Config, train: Dataset) -> Config:
    """The configuration with --xflip and --dequantise resolved for the data (so config.json records what ran);
    one line for an option the data cannot take (and for --eval-metric fid or kid without its extra)."""
    data = cfg.data
    if cfg.log.eval_metric != "auto":
        check_metric(cfg.log.eval_metric, train)
    if data.xflip and train.kind == "points":
        raise UserError(f"--xflip flips images; '{cfg.data.spec}' holds points")
    if data.dequantise and not train.levels:
        raise UserError(f"--dequantise needs discrete images (digits, mnist, 8-bit files); '{cfg.data.spec}' "
                        "has no intensity levels")
    resolved = {"xflip": train.flips if data.xflip is None else data.xflip,
                "dequantise": bool(train.levels) if data.dequantise is None else data.dequantise}
    return cfg.replace(**resolved) if resolved != {"xflip": data.xflip, "dequantise": data.dequantise} else cfg


__all__ = ["RunContext", "context", "data_options"]
