"""What a checkpoint and a run directory put on the device a model trains and samples on.

On CPU these hold trivially for the CPU; run with SCOREFAST_TEST_DEVICE=cuda they check the GPU's side: the
generator a training step draws from on the device, and a run's fitted prior placed where its sampler draws.
"""

import torch

from scorefast.analytic import GaussianScore
from scorefast.checkpoint import save_checkpoint
from scorefast.config import Config
from scorefast.data import load_data
from scorefast.evaluate import Evaluator
from scorefast.methods.densities import GaussianPrior
from scorefast.run import RunDir
from scorefast.time_sampling import TimeSampler, UniformTimes
from scorefast.training.loop import RandomBatches, TrainState
from scorefast.training.optim import EMA

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)


def draws(x: torch.Tensor, times: TimeSampler) -> list[torch.Tensor]:
    """What one training step draws on x's device: a batch, its times and its noise."""
    batch = next(RandomBatches(x, 8))
    return [batch, times(8, x.device), torch.randn_like(batch)]


def test_a_checkpoint_restores_the_generators_a_step_draws_from(device):
    """Batches, times and noise are drawn on the model's device: the train state saves that device's generator
    with the CPU one, so a resumed run (which seeds afresh, then loads) continues the draws, not repeats them."""
    model = torch.nn.Linear(2, 2).to(device)
    state = TrainState(model, EMA(model, 0.9))
    x, times = torch.arange(200.0, device=device).reshape(100, 2), UniformTimes(1e-3, 1.0)
    torch.manual_seed(0)
    before = draws(x, times)  # the steps before the checkpoint
    saved = state.state_dict()
    want = draws(x, times)
    torch.manual_seed(0)  # a resumed process seeds afresh, then loads the checkpoint
    state.load_state_dict(saved)
    got = draws(x, times)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not any(torch.equal(a, b) for a, b in zip(before, want))  # what a seed without the restore would draw


def test_a_run_loads_its_prior_on_the_device_it_samples_on(tmp_path, device):
    """A truncated run's prior at T comes back on the run's device, and the evaluator's device generator draws
    x_T from it: with the exact score and p_T itself as the prior, the PF-ODE samples have p_eps's mean."""
    cfg = Config(data="gaussian2d", out=str(tmp_path / "run"), T=0.3, prior="gaussian")
    run = RunDir(cfg.log.out)
    run.write_config(cfg, load_data(cfg.data.spec, n=10))
    sde = cfg.sde.build()
    score = GaussianScore(sde, MEAN, COV)
    exact = GaussianPrior.from_moments(*score.marginal(torch.tensor(sde.T, dtype=torch.float64)))
    save_checkpoint(run.prior_path, {"prior": cfg.prior.to_dict(), "dim": 2, "state": exact.state_dict(), "fit": {}})
    prior = run.load_prior(cfg, sde, 2, device)
    assert all(b.device == device for b in prior.buffers())
    n = 4000
    x = Evaluator(n=n, steps=40, scale_steps=False).samples(score.to(device), sde, (2,), prior, device)
    mean_eps, cov_eps = score.marginal(torch.tensor(sde.eps, dtype=torch.float64))
    se = (cov_eps.diagonal().cpu() / n).sqrt()
    assert ((x.double().mean(0) - mean_eps.cpu()).abs() < 4 * se).all()  # N(0, I) at T = 0.3 would be > 0.3 off
