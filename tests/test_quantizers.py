import pytest
import torch

from lqsearch.quant import FakeQuantizer, fake_quantize, round_ste


def test_round_ste_rounds_forward_and_passes_gradient() -> None:
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.tensor([0.0, 2.0, -2.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def test_symmetric_closed_form() -> None:
    # 3 bits: qmax = 3, s = max(|-1|, 2) / 3; x / s = [-1.5, 0.75, 3, 0.375] -> [-2, 1, 3, 0]
    x = torch.tensor([[-1.0, 0.5, 2.0, 0.25]])
    expected = torch.tensor([[-2.0, 1.0, 3.0, 0.0]]) * (2.0 / 3.0)
    torch.testing.assert_close(fake_quantize(x, 3, symmetric=True), expected)


def test_symmetric_lowest_level_is_minus_qmax_minus_one() -> None:
    # 2 bits: qmax = 1, q in [-2, 1]; clip 0.5 -> s = max(1, 0.5) / 1 = 1: -2 is kept, 1.5 clamps to 1
    x = torch.tensor([[-2.0, 1.5, 0.2]])
    torch.testing.assert_close(fake_quantize(x, 2, True, clip=0.5), torch.tensor([[-2.0, 1.0, 0.0]]))


def test_symmetric_half_denominator() -> None:
    # 4 bits, qmax + 0.5 = 7.5: s = 7.5 / 7.5 = 1; 7.5 rounds to 8 and clamps to qmax = 7
    x = torch.tensor([[7.5, -3.0, 1.2]])
    torch.testing.assert_close(fake_quantize(x, 4, True, denominator="qmax+0.5"), torch.tensor([[7.0, -3.0, 1.0]]))


def test_asymmetric_closed_form() -> None:
    # 2 bits: s = (2 - -1) / 3 = 1, z = round(1) = 1; round(x / s) + z = [0, 1, 1 (0.5 to even), 2, 3]
    x = torch.tensor([[-1.0, 0.0, 0.5, 0.6, 2.0]])
    torch.testing.assert_close(fake_quantize(x, 2, symmetric=False), torch.tensor([[-1.0, 0.0, 0.0, 1.0, 2.0]]))


def test_asymmetric_range_contains_zero() -> None:
    # all-positive row: min is taken as 0, so s = 3 / 3 and z = 0
    x = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(fake_quantize(x, 2, symmetric=False), x)
    # a row entirely below 0 keeps 0 representable too
    y = torch.tensor([[-3.0, -2.0, -1.0]])
    torch.testing.assert_close(fake_quantize(y, 2, symmetric=False), y)


def test_rows_are_independent_per_head() -> None:
    # KV layout (batch, heads, tokens, head_dim): each head_dim vector is its own group
    x = torch.tensor([[[[-1.0, 0.0, 0.6, 2.0]], [[10.0, 20.0, 30.0, 0.0]]]])
    out = fake_quantize(x, 2, symmetric=False)
    torch.testing.assert_close(out[0, 0], torch.tensor([[-1.0, 0.0, 1.0, 2.0]]))
    torch.testing.assert_close(out[0, 1], torch.tensor([[10.0, 20.0, 30.0, 0.0]]))


def test_weight_row_clipping() -> None:
    quantizer = FakeQuantizer(3, True, clip_shape=(2, 1), clip_init=0.0)  # sigmoid(0) = 0.5
    w = torch.tensor([[3.0, -1.5, 0.0], [6.0, 6.0, -6.0]])
    # row 0: range 1.5 -> s = 0.5: [3 -> 6 -> clamp 3, -1.5 -> -3, 0]; row 1: s = 1, 6 -> 3, -6 -> -4 (clamp)
    expected = torch.tensor([[1.5, -1.5, 0.0], [3.0, 3.0, -4.0]])
    torch.testing.assert_close(quantizer(w), expected)


def test_full_precision_is_identity() -> None:
    x = torch.randn(4, 8)
    assert fake_quantize(x, 16, True) is x
    assert FakeQuantizer(16, False)(x) is x


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradients_reach_input_and_clipping_through_the_scale(symmetric: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 16, requires_grad=True)
    quantizer = FakeQuantizer(4, symmetric)
    (quantizer(x) * torch.randn(5, 16)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert quantizer.clip_logit.grad is not None and quantizer.clip_logit.grad.abs() > 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_range_rows_stay_zero_with_finite_gradients(symmetric: bool) -> None:
    x = torch.zeros(3, 8, requires_grad=True)
    quantizer = FakeQuantizer(4, symmetric, clip_shape=(3, 1))
    out = quantizer(x)
    assert torch.equal(out, torch.zeros(3, 8))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(quantizer.clip_logit.grad).all()


def test_more_bits_means_less_error() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    errors = [(fake_quantize(x, bits, True) - x).pow(2).mean().item() for bits in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
