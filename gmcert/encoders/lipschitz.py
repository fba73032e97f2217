"""``encoder=lipschitz``: a network that is 1-Lipschitz in l2 by construction, trained by
gmcert itself on the train split so that each class's latents look like N(mu_k, s^2 I).

The map, for flattened inputs x (pixels in [0, 1]):

    z = W_L g(... g(W_2 g(W_1 (x - c) + b_1) + b_2) ...) + b_L,

with c the train split's mean (a translation), every W_i orthogonal (all singular values 1;
:mod:`~gmcert.encoders.lipschitz_layers`) and g a GroupSort. So ``||z - z'|| <= ||x - x'||``:
a certified latent l2 radius is a certified input l2 radius, which
:mod:`gmcert.certify.transfer` applies through ``lipschitz``. That attribute is not assumed to
be 1: it is the product of the spectral norms of the weights actually stored (exact SVD), just
above 1 from float32 rounding.

Training (:mod:`~gmcert.encoders.lipschitz_training`, objective in
:mod:`~gmcert.encoders.gm_objective`) sees the train inputs and labels only, is seeded by the
``seed`` option (the run's seed by default) and is deterministic on the CPU; its weights are
cached by content (:mod:`~gmcert.encoders.weight_cache`) when the run has a cache folder.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import Tensor, nn

from gmcert.encoders.gm_objective import ObjectiveWeights
from gmcert.encoders.lipschitz_layers import (
    ChannelGroupSort,
    GroupSort,
    Translate,
    freeze_orthogonal,
    lipschitz_bound,
    normalized_conv,
    orthogonal_linear,
)
from gmcert.encoders.lipschitz_training import (
    TrainingOptions,
    positive_int,
    seeded,
    train_network,
)
from gmcert.encoders.spectral import spectral_lipschitz
from gmcert.encoders.weight_cache import load_cached, store_weights, weights_key

log = logging.getLogger(__name__)

CACHE_STAGE = "lipschitz"


class LipschitzEncoder(nn.Module):
    """Flattened inputs (B, n) -> latents (B, latent_dim) through ``depth`` orthogonal layers
    of ``width`` units with GroupSort(``group_size``) between them and an orthogonal
    projection to ``latent_dim``. Built and trained (or loaded) by :meth:`fit`.

    Objective (see :mod:`~gmcert.encoders.gm_objective`): ``target_std`` s of every class's
    latent coordinates, the hinge's target radius ``margin`` (latent = input l2 units), and the
    weights of the Gaussian-fit, margin, likelihood and centre terms; ``margin_temperature``
    smooths the hinge over every rival (0: the plain hinge). Training: ``epochs``,
    ``train_batch_size`` (named apart from the encode stage's extraction ``batch_size``),
    ``lr`` (Adam, cosine decay), ``seed``. ``cache_dir``: where trained weights
    are kept (None: always train); ``force``: retrain even when cached.

    ``architecture="conv"`` puts convolution blocks before the dense layers, for images
    (N, C, H, W): per entry of ``channels`` a 3x3 convolution whose operator norm is capped at
    1 while training, then a channel GroupSort, with a PixelUnshuffle(2) between blocks. Its
    ``lipschitz`` is the spectral bound of the frozen weights (exact convolution norms).
    """

    name = "lipschitz"

    def __init__(
        self,
        *,
        latent_dim: int = 10,
        width: int = 256,
        depth: int = 2,
        group_size: int = 2,
        target_std: float = 0.25,
        margin: float = 1.0,
        fit_weight: float = 0.03,
        margin_weight: float = 1.0,
        likelihood_weight: float = 0.1,
        centre_weight: float = 0.0,
        margin_temperature: float = 0.0,
        epochs: int = 150,
        train_batch_size: int = 256,
        lr: float = 0.01,
        architecture: str = "mlp",
        channels=(16, 32, 16),
        seed: int = 0,
        cache_dir=None,
        force: bool = False,
        progress: bool = True,
    ):
        super().__init__()
        if architecture not in ("mlp", "conv"):
            raise ValueError(f"encoder.architecture must be mlp or conv, got {architecture!r}")
        channels = [positive_int("channels", c) for c in channels]
        if architecture == "conv" and (not channels or any(c % group_size for c in channels)):
            raise ValueError(
                f"encoder.channels must be a non-empty list of multiples of encoder.group_size "
                f"({group_size}) for architecture=conv, got {channels}"
            )
        for key, value in (("latent_dim", latent_dim), ("width", width), ("depth", depth)):
            positive_int(key, value)
        positive_int("group_size", group_size)
        if group_size < 2 or width % group_size:
            raise ValueError(
                f"encoder.width must be a multiple of encoder.group_size >= 2 (GroupSort sorts "
                f"groups of that many units), got width={width}, group_size={group_size}"
            )
        self.objective = ObjectiveWeights(
            target_std=float(target_std),
            margin=float(margin),
            fit=float(fit_weight),
            margin_weight=float(margin_weight),
            likelihood=float(likelihood_weight),
            centre=float(centre_weight),
            margin_temperature=float(margin_temperature),
        )
        self.training_options = TrainingOptions(
            epochs=positive_int("epochs", epochs),
            batch_size=positive_int("train_batch_size", train_batch_size),
            lr=float(lr),
            progress=progress,
        )
        # Everything that determines the weights (and so the cache key), nothing else.
        self.options = {
            "latent_dim": latent_dim,
            "width": width,
            "depth": depth,
            "group_size": group_size,
            "target_std": float(target_std),
            "margin": float(margin),
            "fit_weight": float(fit_weight),
            "margin_weight": float(margin_weight),
            "likelihood_weight": float(likelihood_weight),
            "epochs": epochs,
            "train_batch_size": train_batch_size,
            "lr": float(lr),
            "seed": int(seed),
        }
        # Options added later enter the cache key only when set, so older keys stay valid.
        if architecture == "conv":
            self.options.update(architecture="conv", channels=channels)
        if centre_weight:
            self.options["centre_weight"] = float(centre_weight)
        if margin_temperature:
            self.options["margin_temperature"] = float(margin_temperature)
        self.seed = int(seed)
        self.cache_dir, self.force = cache_dir, force
        self.network: nn.Sequential | None = None
        self.lipschitz: float | None = None
        self.weights_source: str | None = None  # "trained:<key>", the feature cache keys on it
        self.training_seconds: float | None = None  # None when the weights came from the cache
        self.history: list[dict] = []

    def _build(self, offset: Tensor, *, trainable: bool) -> nn.Sequential:
        """The chain of layers for inputs shaped like ``offset`` (flat for the MLP, (C, H, W)
        for conv); norm-keeping parametrizations only when it is to be trained."""
        o = self.options

        def linear(n_in: int, n_out: int) -> nn.Linear:
            return orthogonal_linear(n_in, n_out) if trainable else nn.Linear(n_in, n_out)

        layers: list[nn.Module] = [Translate(offset)]
        n_in = offset.numel()
        if o.get("architecture") == "conv":
            # conv + channel GroupSort blocks; between blocks PixelUnshuffle halves the side
            # (moving pixels into channels, a permutation), so every map stays 1-Lipschitz.
            c, h, w = offset.shape
            for i, width in enumerate(o["channels"]):
                conv = (
                    normalized_conv(c, width, (h, w)) if trainable else nn.Conv2d(c, width, 3, 1, 1)
                )
                layers += [conv, ChannelGroupSort(o["group_size"])]
                c = width
                if i < len(o["channels"]) - 1:
                    layers.append(nn.PixelUnshuffle(2))
                    c, h, w = 4 * c, h // 2, w // 2
            layers.append(nn.Flatten(1))
            n_in = c * h * w
        for _ in range(o["depth"]):
            layers += [linear(n_in, o["width"]), GroupSort(o["group_size"])]
            n_in = o["width"]
        layers.append(linear(n_in, o["latent_dim"]))
        return nn.Sequential(*layers)

    def fit(self, train_inputs, train_labels=None) -> LipschitzEncoder:
        """Train on (or load the cached weights for) the train split; sets ``lipschitz``."""
        if train_labels is None:
            raise ValueError("encoder=lipschitz trains on labelled data: pass train_labels")
        if not isinstance(train_inputs, np.ndarray):
            raise ValueError(
                "encoder=lipschitz trains on in-memory arrays (digits, synthetic); for image "
                "folders use a pretrained encoder"
            )
        x = np.asarray(train_inputs, np.float32)
        if self.options.get("architecture") == "conv":
            blocks = len(self.options["channels"]) - 1
            if x.ndim != 4 or x.shape[2] % 2**blocks or x.shape[3] % 2**blocks:
                raise ValueError(
                    f"encoder.architecture=conv needs images (N, C, H, W) with H and W "
                    f"divisible by {2**blocks} ({blocks} halvings), got {x.shape}; use "
                    "architecture=mlp for flat inputs, or fewer encoder.channels"
                )
        else:
            x = x.reshape(len(x), -1)
        x = torch.as_tensor(x)
        y = torch.as_tensor(np.asarray(train_labels, np.int64))
        if len(x) != len(y):
            raise ValueError(f"{len(x)} train inputs but {len(y)} labels")
        key = weights_key(x.numpy(), y.numpy(), self.options)
        self.weights_source = f"trained:{key}"
        # Seeded only so that the layers' throwaway initialisation leaves the caller's random
        # state alone; the cached weights replace it.
        with seeded(self.seed):
            network = self._build(x.mean(0), trainable=False)
        if load_cached(network, self.cache_dir, CACHE_STAGE, key, force=self.force):
            self.training_seconds = None
        else:
            network = self._train(x, y)
            if self.cache_dir is not None:
                material = {
                    "options": self.options,
                    "n_train": len(x),
                    "input_shape": list(x.shape[1:]),
                }
                store_weights(self.cache_dir, CACHE_STAGE, key, network.state_dict(), material)
        # Evaluated in float64: the certificate is the exact distance to the boundary of the
        # classifier as computed, so its latents must not carry float32 rounding (radii near
        # 0.02 were beaten by attacks 1e-6 inside them when the network ran in float32).
        self.network = network.double().eval().requires_grad_(False)
        if self.options.get("architecture") == "conv":  # exact conv norms of the stored weights
            self.lipschitz = spectral_lipschitz(self.network, tuple(x.shape[1:]))
        else:
            self.lipschitz = lipschitz_bound(self.network)
        log.info("lipschitz encoder: l2 Lipschitz bound %.9f", self.lipschitz)
        return self

    def _train(self, x: Tensor, y: Tensor) -> nn.Sequential:
        start = time.perf_counter()
        with seeded(self.seed):
            network = self._build(x.mean(0), trainable=True)
            result = train_network(
                network,
                x,
                y,
                num_classes=int(y.max()) + 1,
                objective=self.objective,
                options=self.training_options,
            )
        self.history = result.history
        self.training_seconds = time.perf_counter() - start
        log.info("lipschitz encoder: trained in %.1f s", self.training_seconds)
        return freeze_orthogonal(network)

    def linear_map(self) -> None:
        """Not linear in its input: certificates go through ``lipschitz``."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        if self.network is None:
            raise RuntimeError("LipschitzEncoder: call fit(train_inputs, train_labels) first")
        offset = self.network[0].offset
        return self.network(x.to(offset.dtype))
