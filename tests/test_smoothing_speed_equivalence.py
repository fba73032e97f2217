"""SmoothedClassifier.sample_counts against a plain reference loop, bit for bit, at 1-3 threads.

Each block of noisy copies has its own generator (seeded by block_seed), so neither the packing
of blocks into forward batches nor torch's thread setting may change a single bit: the same
noisy inputs reach the base model in the same forward batches, and the counts are equal. Any
speed-up of sample_counts (issue 21 tried drawing blocks on several threads) must keep this.
"""

from __future__ import annotations

import pytest
import torch

from gmcert.certify.smoothing import SmoothedClassifier, _pack_blocks, block_seed


class RecordingBase(torch.nn.Module):
    """A fixed random linear map to ``num_classes`` scores that keeps a copy of every batch."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer(
            "w", torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(3))
        )
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1) @ self.w


def reference_counts(smoothed: SmoothedClassifier, xs, num: int, seeds, stream: int):
    """One block after another with one generator: the noise sample_counts must reproduce."""
    k = smoothed.num_classes
    counts = torch.zeros(len(xs), k, dtype=torch.int64)
    generator = torch.Generator()
    with torch.inference_mode():
        for batch in _pack_blocks(len(xs), num, smoothed.batch_size):
            parts = []
            for owner, block, count in batch:
                generator.manual_seed(block_seed(seeds[owner], stream, block))
                noise = torch.empty((count, *xs.shape[1:]), dtype=xs.dtype)
                parts.append(
                    noise.normal_(0.0, smoothed.sigma, generator=generator).add_(xs[owner])
                )
            labels = smoothed.base(torch.cat(parts)).argmax(dim=1)
            owners = torch.repeat_interleave(
                torch.tensor([owner for owner, _, _ in batch]),
                torch.tensor([count for _, _, count in batch]),
            )
            counts.index_put_((owners, labels), torch.ones_like(labels), accumulate=True)
    return counts


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("m_inputs", "num", "batch_size"),
    [(1, 5000, 1000), (1, 2345, 1000), (7, 30, 100), (5, 250, 100), (3, 100, 1000)],
)
def test_sample_counts_gives_the_reference_noise_and_counts(threads, m_inputs, num, batch_size):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xs = torch.rand(m_inputs, 2, 3, 4, generator=torch.Generator().manual_seed(1))
        seeds = [11 * i + 5 for i in range(m_inputs)]
        base = RecordingBase(24, 5).eval()
        smoothed = SmoothedClassifier(base, 5, 0.5, batch_size=batch_size)
        counts = smoothed.sample_counts(xs, num, seeds=seeds, stream=1)
        seen, base.seen = base.seen, []
        expected = reference_counts(smoothed, xs, num, seeds, stream=1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(counts, expected)
    assert [len(x) for x in seen] == [len(x) for x in base.seen]
    for got, want in zip(seen, base.seen, strict=True):
        assert torch.equal(got, want)  # bit for bit, not just the same counts


def test_counts_under_the_callers_inference_mode(two_threads):
    # The noise buffer is then an inference tensor, written in place.
    base = RecordingBase(24, 5).eval()
    smoothed = SmoothedClassifier(base, 5, 0.5, batch_size=100)
    xs = torch.rand(3, 24, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        counts = smoothed.sample_counts(xs, 450, seeds=[1, 2, 3])
    assert torch.equal(counts, reference_counts(smoothed, xs, 450, [1, 2, 3], stream=0))
