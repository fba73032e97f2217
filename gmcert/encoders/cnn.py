"""``encoder=cnn``: an ordinary convolutional network trained by gmcert with cross-entropy on
the train split, then frozen and used as if it were a pretrained encoder.

This is the setting the method is meant for (a network trained for another job, whose latent
law is only approximately a Gaussian mixture), small enough to train on a CPU. The network:

    conv3x3(C -> c_1) ReLU maxpool2 ... conv3x3(c_{m-1} -> c_m) ReLU maxpool2
    flatten linear(-> latent_dim) ReLU                          [the encoder: frozen]
    linear(latent_dim -> classes)                               [the head: training only]

The latents are the post-ReLU penultimate features, as for torchvision's ResNets, so some of
their coordinates are exact zeros: nothing is done to make them look Gaussian. The head is
discarded after training; the mixture is fitted on the latents instead.

``lipschitz`` is the honest spectral bound of the frozen encoder for its input shape
(:func:`gmcert.encoders.spectral.spectral_lipschitz`: exact conv operator norms, max pooling
with stride = kernel has constant 1). It is typically in the hundreds, which makes the input
radii it certifies near zero; that is a property of ordinary networks, reported as measured.

Training is seeded (``seed``), deterministic on the CPU, and cached by content under the run's
cache folder (:mod:`~gmcert.encoders.weight_cache`), like ``encoder=lipschitz``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from gmcert.encoders.lipschitz_training import positive_int, seeded
from gmcert.encoders.spectral import spectral_lipschitz
from gmcert.encoders.weight_cache import load_cached, store_weights, weights_key

log = logging.getLogger(__name__)

CACHE_STAGE = "cnn"


def build_network(
    input_shape: tuple[int, int, int], channels: tuple[int, ...], latent_dim: int
) -> nn.Sequential:
    """The encoder part: conv blocks, then a linear layer to ``latent_dim`` and a ReLU."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for width in channels:
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    layers += [nn.Flatten(1), nn.Linear(c * h * w, latent_dim), nn.ReLU()]
    return nn.Sequential(*layers)


class TrainedCNNEncoder(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> post-ReLU features (B, latent_dim).

    ``channels``: the output channels of each conv block (each halves the image side, so the
    image side must be divisible by 2 ** len(channels)); ``latent_dim``: the feature size.
    Training: ``epochs`` of Adam at ``lr`` with cosine decay, batches of ``train_batch_size``,
    seeded by ``seed``. ``cache_dir``: where trained weights are kept (None: always train);
    ``force``: retrain even when cached.
    """

    name = "cnn"

    def __init__(
        self,
        *,
        channels=(32, 64),
        latent_dim: int = 128,
        epochs: int = 3,
        train_batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        cache_dir=None,
        force: bool = False,
        progress: bool = True,
    ):
        super().__init__()
        channels = tuple(channels)
        if not channels:
            raise ValueError("encoder.channels needs at least one conv block, e.g. [32, 64]")
        for width in channels:
            positive_int("channels", width)
        self.options = {
            "channels": list(channels),
            "latent_dim": positive_int("latent_dim", latent_dim),
            "epochs": positive_int("epochs", epochs),
            "train_batch_size": positive_int("train_batch_size", train_batch_size),
            "lr": float(lr),
            "seed": int(seed),
        }
        if not self.options["lr"] > 0:
            raise ValueError(f"encoder.lr must be > 0, got {lr!r}")
        self.cache_dir, self.force, self.progress = cache_dir, force, progress
        self.network: nn.Sequential | None = None
        self.lipschitz: float | None = None
        self.weights_source: str | None = None  # "trained:<key>", the feature cache keys on it
        self.training_seconds: float | None = None  # None when the weights came from the cache
        self.train_accuracy: float | None = None  # of the discarded head, last epoch

    def _check_inputs(self, train_inputs) -> tuple[int, int, int]:
        if not isinstance(train_inputs, np.ndarray) or train_inputs.ndim != 4:
            shape = getattr(train_inputs, "shape", type(train_inputs).__name__)
            raise ValueError(
                f"encoder=cnn trains on in-memory images (N, C, H, W) such as dataset="
                f"fashion_mnist, mnist, folder or arrays with image-shaped x, got {shape}; for "
                "flat features use encoder=lipschitz or pca"
            )
        c, h, w = (int(s) for s in train_inputs.shape[1:])
        blocks = len(self.options["channels"])
        if h % 2**blocks or w % 2**blocks:
            raise ValueError(
                f"encoder=cnn with {blocks} conv blocks halves the image side {blocks} times: "
                f"{h}x{w} is not divisible by {2**blocks}; use fewer encoder.channels or "
                "another dataset.image_size"
            )
        return c, h, w

    def fit(self, train_inputs, train_labels=None) -> TrainedCNNEncoder:
        """Train on (or load the cached weights for) the train split; sets ``lipschitz``."""
        if train_labels is None:
            raise ValueError("encoder=cnn trains on labelled data: pass train_labels")
        shape = self._check_inputs(train_inputs)
        x = torch.as_tensor(np.asarray(train_inputs, np.float32))
        y = torch.as_tensor(np.asarray(train_labels, np.int64))
        if len(x) != len(y):
            raise ValueError(f"{len(x)} train inputs but {len(y)} labels")
        key = weights_key(x.numpy(), y.numpy(), self.options)
        self.weights_source = f"trained:{key}"
        o = self.options
        with seeded(o["seed"]):
            network = build_network(shape, tuple(o["channels"]), o["latent_dim"])
        if not load_cached(network, self.cache_dir, CACHE_STAGE, key, force=self.force):
            self._train(network, x, y)
            if self.cache_dir is not None:
                material = {"options": o, "n_train": len(x), "input_shape": list(shape)}
                store_weights(self.cache_dir, CACHE_STAGE, key, network.state_dict(), material)
        # float64, as encoder=lipschitz: the latents carry no float32 rounding of their own.
        self.network = network.double().eval().requires_grad_(False)
        self.lipschitz = spectral_lipschitz(self.network, shape)
        log.info("cnn encoder: spectral l2 Lipschitz bound %.6g", self.lipschitz)
        return self

    def _train(self, network: nn.Sequential, x: Tensor, y: Tensor) -> None:
        o = self.options
        start = time.perf_counter()
        with seeded(o["seed"]):
            head = nn.Linear(o["latent_dim"], int(y.max()) + 1)
            parameters = [*network.parameters(), *head.parameters()]
            optimiser = torch.optim.Adam(parameters, lr=o["lr"])
            batches = max(1, round(len(x) / o["train_batch_size"]))
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, o["epochs"] * batches)
            network.train()
            epochs = tqdm(
                range(o["epochs"]),
                desc="train cnn encoder",
                unit="epoch",
                leave=False,
                disable=not self.progress,
            )
            for _ in epochs:
                loss_sum, correct = 0.0, 0
                for rows in torch.tensor_split(torch.randperm(len(x)), batches):
                    logits = head(network(x[rows]))
                    loss = F.cross_entropy(logits, y[rows])
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"the cnn encoder's training loss became {float(loss)}; lower "
                            "encoder.lr"
                        )
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    loss_sum += float(loss.detach()) / batches
                    correct += int((logits.argmax(1) == y[rows]).sum())
                self.train_accuracy = correct / len(x)
                epochs.set_postfix(loss=f"{loss_sum:.3g}", acc=f"{self.train_accuracy:.3f}")
            network.eval()
        self.training_seconds = time.perf_counter() - start
        log.info(
            "cnn encoder: trained in %.1f s (train accuracy of the head %.4f)",
            self.training_seconds,
            self.train_accuracy,
        )

    def linear_map(self) -> None:
        """Not linear in its input: certificates go through ``lipschitz``."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        if self.network is None:
            raise RuntimeError("TrainedCNNEncoder: call fit(train_inputs, train_labels) first")
        return self.network(x.to(torch.float64))
