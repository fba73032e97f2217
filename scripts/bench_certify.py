"""Closed-form certify throughput against the bare score matmul `Z @ M.T`, timed side by side.

Writes outputs/bench/certify.json. Target (issue 2): certify time <= 1.5x the bare matmul.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

from gmcert.certify.linear import LinearCertifier
from gmcert.io import write_json

SHAPES = [(10, 512), (1000, 768)]
BATCH = 4096
ROWS = 32768


def bench(num_classes, dim, dtype, device):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((num_classes, dim))
    c = rng.standard_normal(num_classes)
    certifier = LinearCertifier(M, c, device=device, dtype=dtype)
    Z = torch.as_tensor(rng.standard_normal((ROWS, dim)), dtype=dtype, device=device)
    Mt = torch.as_tensor(M, dtype=dtype, device=device).T
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def bare():
        for i in range(0, ROWS, BATCH):
            Z[i : i + BATCH] @ Mt
        sync()

    def certify():
        for i in range(0, ROWS, BATCH):
            certifier.certify(Z[i : i + BATCH])
        sync()

    t_bare, t_cert = median_seconds(bare), median_seconds(certify)
    return {
        "num_classes": num_classes,
        "dim": dim,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device.type,
        "batch": BATCH,
        "rows": ROWS,
        "bare_matmul_latents_per_s": ROWS / t_bare,
        "certify_latents_per_s": ROWS / t_cert,
        "certify_over_matmul": t_cert / t_bare,
    }


def main():
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = [
        bench(k, d, dtype, dev)
        for dev in devices
        for dtype in (torch.float64, torch.float32)
        for k, d in SHAPES
    ]
    out = Path("outputs/bench/certify.json")
    write_json(out, {"threads": torch.get_num_threads(), "target_ratio": 1.5, "results": results})
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
