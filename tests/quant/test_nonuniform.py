import pytest
import torch

from edgeq.quant import (
    QuantSpec,
    SpecError,
    codebook_dequantize,
    codebook_fake_quantize,
    codebook_quantize,
    kmeans_codebook,
    power_of_two_codebook,
    power_of_two_levels,
)

KMEANS4 = QuantSpec(bits=4, scheme="kmeans")


def test_power_of_two_levels_known_answer():
    assert power_of_two_levels(3, signed=True).tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    assert power_of_two_levels(2, signed=False).tolist() == [0.0, 0.25, 0.5, 1.0]
    assert len(power_of_two_levels(8, signed=True)) == 255


def test_power_of_two_snaps_to_the_nearest_level():
    spec = QuantSpec(bits=3, scheme="power_of_two")
    x = torch.tensor([4.0, 1.4, 0.9, -3.1, 0.0, 0.2])
    cb = power_of_two_codebook(x, spec)  # 4 * {0, ±1/4, ±1/2, ±1}
    x_hat = codebook_dequantize(codebook_quantize(x, cb, spec), cb, spec)
    # -3.1 is 0.9 from -4 and 1.1 from -2; 0.2 is nearer 0 than 1
    assert x_hat.tolist() == [4.0, 1.0, 1.0, -4.0, 0.0, 0.0]


def test_kmeans_finds_obvious_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    x = (centres[torch.randint(0, 4, (4000,))] + 0.01 * torch.randn(4000)).float()
    cb = kmeans_codebook(x, QuantSpec(bits=2, scheme="kmeans"))
    assert torch.allclose(cb.flatten(), centres, atol=0.01)


def test_kmeans_is_deterministic():
    x = torch.randn(1000)
    assert torch.equal(kmeans_codebook(x, KMEANS4), kmeans_codebook(x, KMEANS4))


def test_kmeans_4bit_beats_uniform_4bit_on_gaussian_weights():
    from edgeq.quant import dequantize, quantize_tensor

    torch.manual_seed(0)
    w = torch.randn(64, 256)
    cb = kmeans_codebook(w, KMEANS4)
    kmeans_mse = float(
        ((codebook_dequantize(codebook_quantize(w, cb, KMEANS4), cb, KMEANS4) - w) ** 2).mean()
    )
    spec = QuantSpec(bits=4)
    q, s, z = quantize_tensor(w, spec)
    uniform_mse = float(((dequantize(q, s, z, spec) - w) ** 2).mean())
    assert kmeans_mse < 0.5 * uniform_mse


def test_per_channel_codebooks():
    w = torch.stack([torch.linspace(-1, 1, 50), torch.linspace(-100, 100, 50)])
    spec = QuantSpec(bits=3, scheme="kmeans", granularity="per_channel", axis=0)
    cb = kmeans_codebook(w, spec)
    assert cb.shape == (2, 8)
    idx = codebook_quantize(w, cb, spec)
    assert idx.shape == w.shape
    assert int(idx.max()) <= 7
    x_hat = codebook_dequantize(idx, cb, spec)
    assert float((x_hat[0] - w[0]).abs().max()) < 0.2
    assert float((x_hat[1] - w[1]).abs().max()) < 20


def test_codebook_fake_quantize_gradients():
    x = torch.tensor([0.1, 0.9, 1.1], requires_grad=True)
    cb = torch.tensor([[0.0, 1.0]], requires_grad=True)
    y = codebook_fake_quantize(x, cb, QuantSpec(bits=1, scheme="kmeans"))
    assert y.detach().tolist() == [0.0, 1.0, 1.0]
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]  # straight through
    assert cb.grad.tolist() == [[1.0, 5.0]]  # summed per cluster


def test_scheme_mismatch_is_rejected():
    with pytest.raises(SpecError, match="expected a spec with scheme=kmeans"):
        kmeans_codebook(torch.randn(10), QuantSpec())
