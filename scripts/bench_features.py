"""Feature extraction (gmcert.features.extract_features) against the bare forward pass of the
same encoder at the same batch size, timed side by side. Writes outputs/bench/features.json.

Random-init torchvision ResNet-18 / ResNet-50 at 32 px on CPU (no weights can be downloaded
here); on CUDA the same script also times the bf16 / channels_last path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

from gmcert.encoders import build_encoder
from gmcert.features import extract_features
from gmcert.io import write_json

IMAGES = 512
BATCH = 128


def bench(name, device):
    encoder = build_encoder(name, weights="random", image_size=32).eval().to(device)
    images = np.random.default_rng(0).random((IMAGES, 3, 32, 32), dtype=np.float32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def bare():
        for i in range(0, IMAGES, BATCH):
            encoder(torch.from_numpy(images[i : i + BATCH]).to(device)).cpu()
        sync()

    def extract():
        extract_features(
            encoder, images, device=device, batch_size=BATCH, bf16=False, channels_last=False
        )
        sync()

    t_bare, t_extract = median_seconds(bare, 3), median_seconds(extract, 3)
    return {
        "encoder": name,
        "device": device.type,
        "batch": BATCH,
        "images": IMAGES,
        "bare_images_per_s": IMAGES / t_bare,
        "extract_images_per_s": IMAGES / t_extract,
        "extract_over_bare_time": t_extract / t_bare,
    }


def main():
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = [bench(name, dev) for dev in devices for name in ("resnet18", "resnet50")]
    write_json(
        Path("outputs/bench/features.json"),
        {"threads": torch.get_num_threads(), "results": results},
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
