"""Training a 1-Lipschitz network on the train split with the Gaussian-mixture objective.

Reproducible bit for bit on the CPU: everything random (the layers' initialisation, the batch
order) draws from torch's generator seeded inside :func:`seeded` (the caller's global random
state is saved and restored around it), and deterministic algorithms are enforced (on one
thread) while it runs. Adam with a cosine learning-rate decay to 0; batches are near-equal
slices of a fresh permutation each epoch (no ragged last batch, whose class covariances would
be noisy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gmcert.encoders.gm_objective import ObjectiveWeights, gm_loss


def positive_int(name: str, value) -> int:
    """``value`` when it is an integer >= 1 (not a bool), else a ValueError naming
    ``encoder.<name>``: the check every trained encoder's size options share."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"encoder.{name} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainingOptions:
    epochs: int
    batch_size: int
    lr: float
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"training needs epochs >= 1 and batch_size >= 2, got epochs={self.epochs}, "
                f"batch_size={self.batch_size}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator at ``seed``, deterministic algorithms on and
    one intra-op thread, leaving the caller's random state and settings as they were.

    One thread because the matrices here are small (hundreds of rows): splitting them across
    threads costs more than it saves, and on a busy machine threads waiting for each other made
    training tens of times slower. It also keeps the floating-point summation order, and so
    the weights, independent of the machine's core count.
    """
    enforced = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(enforced)


@dataclass(frozen=True)
class TrainingResult:
    means: Tensor  # (K, d) the target class means mu_k the objective learned
    history: list[dict]  # per epoch: the mean of each loss term over its batches


def train_network(
    network: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    objective: ObjectiveWeights,
    options: TrainingOptions,
) -> TrainingResult:
    """Fit ``network`` (inputs -> latents) in place; call inside :func:`seeded`.

    The class means mu_k are learned beside the network, starting from the class means of the
    initial latents. ``inputs`` (n, ...) float and ``labels`` (n,) int64 come from the train
    split only.
    """
    network.train()
    with torch.no_grad():  # in slices: a conv network's activations of all inputs are GBs
        start = torch.cat([network(part) for part in inputs.split(4096)])
    means = torch.stack([start[labels == k].mean(0) for k in range(num_classes)])
    means = nn.Parameter(means)
    optimiser = torch.optim.Adam([*network.parameters(), means], lr=options.lr)
    batches = max(1, round(len(inputs) / options.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, options.epochs * batches)
    history = []
    epochs = tqdm(
        range(options.epochs),
        desc="train lipschitz encoder",
        unit="epoch",
        leave=False,
        disable=not options.progress,
    )
    for _ in epochs:
        sums: dict[str, float] = {}
        for rows in torch.tensor_split(torch.randperm(len(inputs)), batches):
            terms = gm_loss(network(inputs[rows]), labels[rows], means, objective)
            if not torch.isfinite(terms["total"]):
                raise FloatingPointError(
                    f"the encoder's training loss became {float(terms['total'])} "
                    f"({', '.join(f'{k}={float(v):.4g}' for k, v in terms.items())}); lower "
                    "encoder.lr, or raise encoder.train_batch_size so that every class has more "
                    "points per batch than encoder.latent_dim"
                )
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimiser.step()
            schedule.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / batches
        history.append(sums)
        epochs.set_postfix({name: f"{value:.3g}" for name, value in sums.items()})
    network.eval()
    return TrainingResult(means.detach().clone(), history)
