"""Each loss against values computed by hand on a 2-pixel, 2-class example.

logits: pixel a = [0, 0] -> p = [1/2, 1/2]; pixel b = [ln 3, 0] -> p = [3/4, 1/4]; targets a=0, b=1.
"""
import math

import pytest
import torch

from utils.errors import UserError
from utils.losses import LOSSES, SegLoss, parse_loss_spec

LOGITS = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (N=1, C=2, H=1, W=2)
TARGET = torch.tensor([[[0, 1]]])
TARGET_IGN = torch.tensor([[[0, 255]]])  # pixel b ignored


def loss(name, target=TARGET, **kw):
    return float(LOSSES.get(name)(LOGITS, target, 255, **kw))


def test_cross_entropy():
    assert loss("ce") == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    assert loss("ce", TARGET_IGN) == pytest.approx(math.log(2), abs=1e-6)
    # class-weighted mean: (1 * ln2 + 3 * ln4) / (1 + 3)
    assert loss("ce", weight=torch.tensor([1.0, 3.0])) == pytest.approx((math.log(2) + 3 * math.log(4)) / 4, abs=1e-6)


def test_dice():
    # class 0: I = 1/2, P = 5/4, T = 1; class 1: I = 1/4, P = 3/4, T = 1; smooth 1
    d0, d1 = (2 * 0.5 + 1) / (1.25 + 1 + 1), (2 * 0.25 + 1) / (0.75 + 1 + 1)
    assert loss("dice") == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    assert loss("dice", weight=torch.tensor([1.0, 3.0])) == pytest.approx(1 - (d0 + 3 * d1) / 4, abs=1e-6)
    # b ignored: class 0: I = 1/2, P = 1/2, T = 1; class 1: I = 0, P = 1/2, T = 0
    assert loss("dice", TARGET_IGN) == pytest.approx(1 - ((2 * 0.5 + 1) / 2.5 + 1 / 1.5) / 2, abs=1e-6)


def test_jaccard():
    j0, j1 = (0.5 + 1) / (1.25 + 1 - 0.5 + 1), (0.25 + 1) / (0.75 + 1 - 0.25 + 1)
    assert loss("jaccard") == pytest.approx(1 - (j0 + j1) / 2, abs=1e-6)
    assert loss("jaccard", TARGET_IGN) == pytest.approx(1 - ((0.5 + 1) / (0.5 + 1 - 0.5 + 1) + 1 / 1.5) / 2, abs=1e-6)


def test_focal():
    fa, fb = 0.5**2 * math.log(2), 0.75**2 * math.log(4)
    assert loss("focal") == pytest.approx((fa + fb) / 2, abs=1e-6)
    assert loss("focal", TARGET_IGN) == pytest.approx(fa, abs=1e-6)


def test_tversky_equals_dice_at_half():
    # (I + s/2) / (I + FP/2 + FN/2 + s/2) = (2I + s) / (P + T + s)
    assert loss("tversky", alpha=0.5, beta=0.5, smooth=0.5) == pytest.approx(loss("dice"), abs=1e-6)


@pytest.mark.parametrize("name", LOSSES.names())
def test_ignored_pixels_change_nothing(name):
    """Whatever an ignored pixel's logits are, the loss and its gradient on other pixels are unchanged."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, :2] = 255
    other = logits.clone()
    other[0, :, :2] = torch.randn(4, 2, 6, generator=g) * 50
    a, b = logits.clone().requires_grad_(), other.clone().requires_grad_()
    la, lb = LOSSES.get(name)(a, target, 255), LOSSES.get(name)(b, target, 255)
    assert float(la.detach()) == pytest.approx(float(lb.detach()), abs=1e-6)
    la.backward()
    lb.backward()
    assert torch.allclose(a.grad[0, :, 2:], b.grad[0, :, 2:], atol=1e-7)
    assert float(a.grad[0, :, :2].abs().max()) == 0.0


def test_all_ignored_gives_zero_with_graph():
    t = torch.full((1, 1, 2), 255)
    x = LOGITS.clone().requires_grad_()
    for name in LOSSES.names():
        out = LOSSES.get(name)(x, t, 255)
        assert float(out.detach()) == pytest.approx(0.0, abs=1e-6)
        out.backward()


def test_spec_parsing_and_combination():
    assert parse_loss_spec("ce+dice") == [("ce", 1.0), ("dice", 1.0)]
    assert parse_loss_spec("ce:1.0,dice:0.5") == [("ce", 1.0), ("dice", 0.5)]
    with pytest.raises(UserError, match="unknown loss 'lovasz'"):
        parse_loss_spec("ce+lovasz")
    with pytest.raises(UserError, match="must be a number"):
        parse_loss_spec("ce:x")
    total, parts = SegLoss("ce:1.0,dice:0.5")(LOGITS, TARGET)
    assert set(parts) == {"ce", "dice"}
    assert float(total) == pytest.approx(loss("ce") + 0.5 * loss("dice"), abs=1e-6)


def test_aux_term_is_weighted():
    crit = SegLoss("ce", aux_weight=0.4)
    total, parts = crit((LOGITS, LOGITS * 0), TARGET)
    assert float(parts["aux"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(total) == pytest.approx(loss("ce") + 0.4 * math.log(2), abs=1e-6)


def test_registry_refuses_duplicates():
    with pytest.raises(KeyError, match="already registered"):
        LOSSES.register("ce")(lambda *a: None)


def test_ohem_keeps_the_hard_pixels_by_hand():
    """Pixels with p_true < 0.7 (CE > 0.357) are kept: CE 0.0067 (easy) is dropped, the other three averaged;
    with every pixel easy, the hardest 1/16 (at least one) remain."""
    lg = torch.zeros(1, 2, 1, 4)
    lg[0, 0, 0] = torch.tensor([5.0, 0.0, -2.0, 1.0])
    t = torch.tensor([[[0, 0, 0, 1]]])
    ce = torch.nn.functional.cross_entropy(lg, t, reduction="none").flatten()
    assert float(LOSSES.get("ohem")(lg, t, 255)) == pytest.approx(float(ce[1:].mean()), abs=1e-6)
    easy = torch.zeros(1, 2, 1, 4)
    easy[0, 0, 0] = torch.tensor([9.0, 8.0, 7.0, 6.0])
    ce = torch.nn.functional.cross_entropy(easy, torch.zeros(1, 1, 4, dtype=torch.long), reduction="none").flatten()
    assert float(LOSSES.get("ohem")(easy, torch.zeros(1, 1, 4, dtype=torch.long), 255)) == pytest.approx(float(ce.max()))


def _ohem_by_topk(logits, target, ignore_index=255, weight=None, thresh=0.7, min_share=1 / 16):
    """The rule written the literal way: top-k of the labelled pixels' losses, k = max(#hard, floor)."""
    valid = target != ignore_index
    per_pixel = torch.nn.functional.cross_entropy(logits, torch.where(valid, target, 0), weight=weight,
                                                  reduction="none")[valid]
    n = per_pixel.numel()
    k = max(int((per_pixel > -math.log(thresh)).sum()), min(n, max(1, int(n * min_share))))
    return per_pixel.topk(k).values.mean()


@pytest.mark.parametrize("scale", [1.0, 12.0])  # mostly hard pixels / almost all easy (the floor decides)
def test_ohem_masked_mean_equals_topk_value_and_gradient(scale):
    torch.manual_seed(1)
    t = torch.randint(0, 5, (2, 9, 11))
    t[1, :3] = 255
    x = torch.randn(2, 5, 9, 11)
    x = (x + scale * torch.nn.functional.one_hot(t.clamp(max=4), 5).permute(0, 3, 1, 2)).requires_grad_(True)
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0])
    for weight in (None, w):
        hard = float((torch.nn.functional.cross_entropy(x, t, ignore_index=255, reduction="none")[t != 255]
                      > -math.log(0.7)).float().mean())
        assert (hard > 0.5) if scale == 1.0 else (hard < 1 / 16), hard  # each case exercises its branch
        got, ref = LOSSES.get("ohem")(x, t, 255, weight), _ohem_by_topk(x, t, 255, weight)
        (g_got,), (g_ref,) = torch.autograd.grad(got, x), torch.autograd.grad(ref, x)
        assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
        assert torch.allclose(g_got, g_ref, atol=1e-7)


def test_ohem_keeps_a_nan_loss_visible():
    """A labelled pixel with a NaN loss (e.g. an fp16 overflow) must make the loss NaN, as the literal top-k
    rule does, so the trainer's non-finite check sees it; the masked mean must not average it away."""
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    t = torch.ones(1, 4, 4, dtype=torch.long)  # every pixel hard (p_true = 1/3 < 0.7): the masked-mean branch
    assert math.isnan(float(LOSSES.get("ohem")(x, t, 255))) and math.isnan(float(_ohem_by_topk(x, t, 255)))


def test_ohem_ignores_an_ignored_pixel_with_infinite_loss():
    """An ignored pixel's stand-in target (class 0) may have log-probability -inf: no NaN may leak out."""
    x = torch.zeros(1, 2, 1, 3)
    x[0, 0, 0, 0] = -float("inf")
    x.requires_grad_(True)
    t = torch.tensor([[[255, 1, 0]]])
    loss = LOSSES.get("ohem")(x, t, 255)
    (g,) = torch.autograd.grad(loss, x)
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6) and torch.isfinite(g).all()


def test_shared_log_softmax_gives_each_term_its_own_value_and_gradient():
    """SegLoss computes one log-softmax for all terms; every term and the gradient equal the terms alone."""
    from utils.losses import SegLoss

    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    t = torch.randint(0, 4, (2, 6, 5))
    t[0, :2] = 255
    names = ["ce", "focal", "ohem", "dice", "jaccard", "tversky"]
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    total, parts = SegLoss("+".join(names), 255, class_weights=w.tolist())(x, t)
    (g_shared,) = torch.autograd.grad(total, x)
    alone = {n: LOSSES.get(n)(x, t, 255, w) for n in names}
    (g_alone,) = torch.autograd.grad(sum(alone.values()), x)
    for n in names:
        assert float(parts[n].detach()) == pytest.approx(float(alone[n].detach()), abs=1e-6), n
    assert torch.allclose(g_shared, g_alone, atol=1e-6)
