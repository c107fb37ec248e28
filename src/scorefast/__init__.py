"""scorefast: train score-based diffusion models in a fraction of the usual time."""

__version__ = "0.1.0"
