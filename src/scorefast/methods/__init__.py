"""The three methods as plug-ins of the one trainer: training targets (score embedding), priors at T
(shorter diffusion times) and partitions of time (parallel score matching), with the mathematics of each."""
