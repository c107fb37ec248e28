"""scorefast: train score-based diffusion models in a fraction of the usual time.

    import scorefast
    summary = scorefast.train(scorefast.TrainConfig(data="moons", out="runs/moons", steps=4000))
    run = scorefast.open_run("runs/moons")
    samples = run.sample(1000)
"""

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy top-level API, so that ``import scorefast`` stays cheap."""
    if name in ("train", "TrainConfig"):
        from . import trainer as _train
        return getattr(_train, name)
    if name in ("open_run", "Run"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
