"""The fused CE / OHEM / Dice pass against autograd through the reference terms (utils/losses.py).

The reference terms have their own hand-computed tests (test_losses.py); here the hand-written backward
must give their values and gradients for every mix SegLoss fuses, in both OHEM branches, with class
weights, ignored pixels, either memory layout and under bf16 autocast.
"""
import math

import pytest
import torch

from utils.losses import LOSSES, SegLoss, _ohem_pixels, fused_terms

# unequal weights in both orders: each term's gradient must reach its own coefficients
MIXES = ["ce", "ohem", "dice", "ohem+dice", "ce:0.5,dice:2", "dice:3,ce:1", "ohem:2,dice:0.5", "ce+ohem+dice"]
WEIGHTS = [1.0, 2.0, 0.5, 3.0, 1.0]


def _case(scale: float, channels_last: bool):
    """Random logits over 5 classes with two ignored rows; a large ``scale`` added to the target class's logit
    makes almost every pixel easy, so OHEM takes its floor (the hardest 1/16) instead of the hard mask."""
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 5, (2, 7, 9), generator=g)
    z = torch.randn(2, 5, 7, 9, generator=g)
    if scale != 1.0:
        z = z + scale * torch.nn.functional.one_hot(t, 5).permute(0, 3, 1, 2)
    t[0, :2] = 255
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    return z, t


def _value_and_grad(spec, fused, z, t, weights):
    x = z.clone().requires_grad_()
    total, parts = SegLoss(spec, 255, weights, fused=fused)(x, t)
    (1.7 * total).backward()  # a grad_output other than 1 reaches every term's backward
    return float(total.detach()), {k: float(v.detach()) for k, v in parts.items()}, x.grad


@pytest.mark.parametrize("spec", MIXES)
@pytest.mark.parametrize("scale", [1.0, 6.0])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_equals_reference_value_and_gradient(spec, scale, weights, channels_last):
    z, t = _case(scale, channels_last)
    total_ref, parts_ref, g_ref = _value_and_grad(spec, False, z, t, weights)
    total, parts, g = _value_and_grad(spec, True, z, t, weights)
    assert total == pytest.approx(total_ref, rel=1e-5, abs=1e-6)
    assert parts == pytest.approx(parts_ref, rel=1e-5, abs=1e-6)
    assert g.shape == z.shape and g.abs().max() > 0
    assert torch.allclose(g, g_ref, rtol=1e-5, atol=1e-5 * float(g_ref.abs().max())), (g - g_ref).abs().max()


@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_cases_exercise_both_ohem_branches(scale):
    z, t = _case(scale, False)
    valid = t != 255
    nll = torch.nn.functional.cross_entropy(z, torch.where(valid, t, 0), reduction="none")
    chosen, k = _ohem_pixels(nll, valid, 0.7, 1 / 16)
    floor = max(1, int(int(valid.sum()) / 16))
    hard = int(((nll > -math.log(0.7)) & valid).sum())
    assert (k == hard > floor) if scale == 1.0 else (k == floor > hard)
    assert int(chosen.sum()) == k and not bool((chosen & ~valid).any())


def test_only_fusable_mixes_are_fused():
    """A mix with a term the fused pass does not know (focal) goes through the reference terms unchanged."""
    z, t = _case(1.0, False)
    a = _value_and_grad("focal+dice", True, z, t, None)
    b = _value_and_grad("focal+dice", False, z, t, None)
    assert a[0] == b[0] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("weights", [None, torch.tensor([1.0, 0.0, 2.0])])
def test_fused_all_ignored_is_zero_with_zero_gradient(weights):
    z = torch.randn(1, 3, 2, 2)
    z[0, 1, 0, 0] = float("nan")  # an ignored pixel's logits are never read into the gradient
    z.requires_grad_(True)
    t = torch.full((1, 2, 2), 255)
    parts = fused_terms(z, t, ["ce", "ohem"], 255, weights)
    assert [float(v.detach()) for v in parts.values()] == [0.0, 0.0]
    (g,) = torch.autograd.grad(sum(parts.values()), z)
    assert float(g.abs().max()) == 0.0


@pytest.mark.parametrize("c", [1, 2])
def test_fused_few_classes_and_an_absent_class_and_a_zero_weight(c):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, c, 4, 5, generator=g)
    t = torch.zeros(1, 4, 5, dtype=torch.long)  # class 1 (when there is one) never appears in the target
    t[0, 0] = 255
    for weights in (None, [1.0] + [0.0] * (c - 1)):  # the absent class weighs 0
        a, b = (_value_and_grad("ce+ohem+dice", f, z, t, weights) for f in (True, False))
        assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6) and torch.allclose(a[2], b[2], atol=1e-6)


def test_fused_refuses_a_target_of_another_shape():
    with pytest.raises(ValueError, match="target shape"):
        fused_terms(torch.randn(1, 3, 2, 3), torch.zeros(1, 3, 2, dtype=torch.long), ["ce"])


def test_fused_keeps_a_nan_visible_and_an_ignored_inf_harmless():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    t = torch.ones(1, 4, 4, dtype=torch.long)
    assert math.isnan(float(fused_terms(x, t, ["ohem", "dice"])["ohem"]))
    x = torch.zeros(1, 2, 1, 3)
    x[0, 0, 0, 0] = -float("inf")  # the ignored pixel's stand-in class has log-probability -inf
    x.requires_grad_(True)
    parts = fused_terms(x, torch.tensor([[[255, 1, 0]]]), ["ce", "ohem", "dice"])
    (g,) = torch.autograd.grad(sum(parts.values()), x)
    assert float(parts["ohem"].detach()) == pytest.approx(math.log(2), abs=1e-6) and torch.isfinite(g).all()
    ref = {n: LOSSES.get(n)(x, torch.tensor([[[255, 1, 0]]]), 255) for n in parts}
    (g_ref,) = torch.autograd.grad(sum(ref.values()), x)
    assert {k: float(v.detach()) for k, v in parts.items()} == pytest.approx({k: float(v.detach()) for k, v in ref.items()})
    assert torch.allclose(g, g_ref, atol=1e-7)


def test_fused_under_bf16_autocast_matches_reference():
    """The trainer's bf16 logits: the fused pass runs in fp32 (its matmuls kept out of autocast) and hands
    back a bf16 gradient, as autograd through the reference terms does."""
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 11, 16, 20, generator=g).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 11, (2, 16, 20), generator=g)
    conv = torch.nn.Conv2d(11, 11, 1)
    out = {}
    for fused in (False, True):
        z = z0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = conv(z)
            total, parts = SegLoss("ohem+dice", fused=fused)(logits, t)
        assert logits.dtype == torch.bfloat16
        total.backward()
        out[fused] = ({k: float(v.detach()) for k, v in parts.items()}, z.grad)
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-6)
    assert torch.allclose(out[True][1], out[False][1], rtol=1e-2, atol=1e-6)
