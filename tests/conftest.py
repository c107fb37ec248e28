"""Shared test set-up: one torch thread per test process.

Small models run as fast on one thread, and a single thread cannot be oversubscribed when tests
spawn worker processes (torchrun, the CLI) or share the machine.
"""

import torch

torch.set_num_threads(1)
