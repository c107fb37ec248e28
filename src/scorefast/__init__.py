"""scorefast: train score-based diffusion models in a fraction of the usual time.

    import scorefast
    summary = scorefast.train(scorefast.Config(data="moons", out="runs/moons", steps=4000))
    run = scorefast.open_run("runs/moons")
    samples = run.sample(1000)

``TrainConfig`` is the same class as ``Config`` (its keywords are the flags of ``scorefast train``).
"""

__version__ = "0.2.0"

_LAZY = {"train": ("training.recipe", "train"), "Config": ("config", "Config"),
         "TrainConfig": ("config", "Config"), "open_run": ("run", "open_run"), "Run": ("run", "Run")}


def __getattr__(name):
    """Lazy top-level API, so that ``import scorefast`` stays cheap."""
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(name)
