"""Segmentation losses over (N, C, H, W) logits and (N, H, W) integer targets.

Every loss ignores ``ignore_index`` completely: ignored pixels add nothing to any numerator or
denominator. Optional per-class weights: cross-entropy and focal weight each pixel by its target
class; Dice/Jaccard/Tversky take a weighted mean of their per-class scores.
Losses are combined from a spec such as ``ce+dice`` or ``ce:1.0,dice:0.5``; every loss also takes
``log_probs`` (the log-softmax of the logits, computed once by SegLoss for all its terms: at batch 8,
360x480 a second softmax and its backward cost ~80 ms per step on 2 cores).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError
from utils.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register

OHEM_THRESH, OHEM_MIN_SHARE, DICE_SMOOTH = 0.7, 1 / 16, 1.0  # shared by the reference terms and the fused pass


def _log_probs(logits: torch.Tensor, log_probs: torch.Tensor | None) -> torch.Tensor:
    return F.log_softmax(logits.float(), 1) if log_probs is None else log_probs


def _valid(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of counted pixels, target with ignored pixels replaced by class 0)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


@register_loss("ce")
def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                  weight: torch.Tensor | None = None, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels (class-weighted mean when ``weight`` is given)."""
    valid, _ = _valid(target, ignore_index)
    if not valid.any():
        return logits.sum() * 0.0  # keeps the graph; no labelled pixel, no signal
    if log_probs is not None:
        return F.nll_loss(log_probs, target, weight=weight, ignore_index=ignore_index)
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


@register_loss("focal")
def focal(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
          weight: torch.Tensor | None = None, log_probs: torch.Tensor | None = None, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss -(1 - p_t)^gamma * log p_t, averaged over non-ignored pixels (weighted by class)."""
    valid, t = _valid(target, ignore_index)
    logp = _log_probs(logits, log_probs).gather(1, t.unsqueeze(1)).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    w = valid.float() if weight is None else weight[t] * valid
    denom = w.sum()
    return (loss * w).sum() / denom if denom > 0 else logits.sum() * 0.0


@register_loss("ohem")
def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                       weight: torch.Tensor | None = None, log_probs: torch.Tensor | None = None, thresh: float = OHEM_THRESH,
                       min_share: float = OHEM_MIN_SHARE) -> torch.Tensor:
    """Online hard-example mining CE: the mean over the pixels whose true-class probability is below
    ``thresh``, and never fewer than ``min_share`` of the labelled pixels (the hardest ones).

    The easy majority (sky, road) stops drowning the gradient of thin classes once it is learned; the
    floor keeps a signal when almost every pixel is easy. The rule and its defaults (0.7, 1/16 of the
    batch) follow the OHEM cross-entropy used to train BiSeNet/PSPNet-style models.
    """
    valid, t = _valid(target, ignore_index)
    if not valid.any():
        return logits.sum() * 0.0
    per_pixel = F.nll_loss(_log_probs(logits, log_probs), t, weight=weight, reduction="none")
    chosen, k = _ohem_pixels(per_pixel, valid, thresh, min_share)
    # where, not a product: an ignored pixel's (unused) loss may be inf
    return torch.where(chosen, per_pixel, 0.0).sum() / k


def _ohem_pixels(per_pixel: torch.Tensor, valid: torch.Tensor, thresh: float, min_share: float
                 ) -> tuple[torch.Tensor, int]:
    """OHEM's pixels (a mask) and their count: the labelled pixels whose loss is above -log(thresh), or the
    ``min_share`` hardest of them when fewer are. ``valid`` must hold at least one pixel."""
    n_valid = int(valid.sum())
    hard = ~(per_pixel <= -math.log(thresh)) & valid  # a NaN loss counts as hard, as top-k ranks it first
    n_hard, floor = int(hard.sum()), min(n_valid, max(1, int(n_valid * min_share)))
    if n_hard >= floor:
        # the k = n_hard largest losses are exactly the hard pixels: a mask, no top-k (a partial sort of
        # ~0.9 M values per step at batch 8, 288x384) and no boolean compaction and its backward
        return hard, n_hard
    # almost every pixel is easy: the floor's hardest; ignored pixels can never be picked (loss -1 < 0)
    top = per_pixel.masked_fill(~valid, -1.0).flatten().topk(floor, sorted=False).indices
    chosen = torch.zeros(per_pixel.numel(), dtype=torch.bool, device=per_pixel.device)
    return chosen.index_fill_(0, top, True).view_as(per_pixel), floor


def _soft_counts(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, log_probs: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class soft (intersection, prediction mass, target count) over non-ignored pixels.

    Gathered and index-added rather than multiplied with a one-hot target: the (N, C, H, W) one-hot
    cost more than the rest of the loss (measured at batch 8, 360x480, 11 classes: 383 -> 190 ms
    forward + backward on 2 cores, same value).
    """
    valid, t = _valid(target, ignore_index)
    c = logits.shape[1]
    prob = F.softmax(logits.float(), 1) if log_probs is None else log_probs.exp()
    v = valid.unsqueeze(1)
    p_true = prob.gather(1, t.unsqueeze(1)) * v
    inter = prob.new_zeros(c).index_add(0, t.reshape(-1), p_true.reshape(-1))
    return inter, (prob * v).sum((0, 2, 3)), torch.bincount(t[valid], minlength=c).to(prob.dtype)


def _class_mean(score: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return score.mean()
    return (score * weight).sum() / weight.sum().clamp_min(1e-12)


@register_loss("dice")
def dice(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
         weight: torch.Tensor | None = None, log_probs: torch.Tensor | None = None,
         smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """1 - mean over classes of (2 I + s) / (P + T + s), soft counts over the whole batch."""
    inter, pred, true = _soft_counts(logits, target, ignore_index, log_probs)
    return 1.0 - _class_mean((2 * inter + smooth) / (pred + true + smooth), weight)


@register_loss("jaccard")
def jaccard(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
            weight: torch.Tensor | None = None, log_probs: torch.Tensor | None = None,
            smooth: float = 1.0) -> torch.Tensor:
    """Soft IoU loss: 1 - mean over classes of (I + s) / (P + T - I + s)."""
    inter, pred, true = _soft_counts(logits, target, ignore_index, log_probs)
    return 1.0 - _class_mean((inter + smooth) / (pred + true - inter + smooth), weight)


@register_loss("tversky")
def tversky(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
            weight: torch.Tensor | None = None, log_probs: torch.Tensor | None = None, alpha: float = 0.3,
            beta: float = 0.7,
            smooth: float = 1.0) -> torch.Tensor:
    """Tversky loss (alpha weighs false positives, beta false negatives; 0.5/0.5 is Dice)."""
    inter, pred, true = _soft_counts(logits, target, ignore_index, log_probs)
    fp, fn = pred - inter, true - inter
    return 1.0 - _class_mean((inter + smooth) / (inter + alpha * fp + beta * fn + smooth), weight)


FUSED_TERMS = frozenset({"ce", "ohem", "dice"})


class _FusedTerms(torch.autograd.Function):
    """CE / OHEM CE / Dice over one softmax, with the gradient written out (the reference terms above are
    the definition; tests/test_loss_fused.py holds the two to the same values and gradients).

    Through autograd, ohem+dice keeps a dozen full-size (N, C, H, W) intermediates and walks each back: with
    the logits' upsampling it cost 270-300 ms forward + backward at batch 8, 288x384, 11 classes on 2 cores,
    a third of a training step (BENCHMARKS.md). Here the forward keeps the softmax and small per-pixel
    maps; the backward writes the gradient in three passes over the softmax and one scatter.
    Each CE-like term is sum(c * nll) for a per-pixel coefficient map c, so its gradient is
    c * (softmax - onehot). Dice = 1 - sum_c m_c (2 I_c + s) / D_c with D_c = P_c + T_c + s: its gradient
    to the softmax is valid * (a_c - b_c [t = c]) with a_c = m_c (2 I_c + s) / D_c^2 and b_c = 2 m_c / D_c,
    taken through the softmax's Jacobian p_k (g_k - sum_j p_j g_j).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, names: tuple[str, ...],
                weight: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        with torch.autocast(logits.device.type, enabled=False):  # autocast would run the matmuls in bf16
            return _FusedTerms._forward(ctx, logits, target, ignore_index, names, weight)

    @staticmethod
    def _forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, names: tuple[str, ...],
                 weight: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        n, c, h, w = logits.shape
        if target.shape != (n, h, w):  # the flattened view below would pair pixels with the wrong targets
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        # one row of C scores per pixel: a view of channels-last logits (the trainer's layout), whose class
        # reductions then read contiguous memory; an NCHW tensor is copied once
        z = logits.float().permute(0, 2, 3, 1).reshape(-1, c)
        valid, t = _valid(target.reshape(-1), ignore_index)
        logp = F.log_softmax(z, 1)
        nll = -logp.gather(1, t.unsqueeze(1)).squeeze(1)
        prob = logp.exp_()  # the log-softmax is not needed again: its memory becomes the softmax
        w_t = weight[t] if weight is not None else None
        vf = valid.to(prob.dtype)
        n_valid = int(valid.sum())
        values, coefs = [], []
        dice_saved: tuple[torch.Tensor, ...] = ()
        for name in names:
            if name == "dice":
                p_true = prob.gather(1, t.unsqueeze(1)).squeeze(1) * vf
                inter = prob.new_zeros(c).index_add_(0, t, p_true)
                pred = vf @ prob
                true = torch.bincount(t[valid], minlength=c).to(prob.dtype)
                m = torch.full((c,), 1.0 / c, dtype=prob.dtype, device=prob.device) if weight is None \
                    else weight.to(prob.dtype) / weight.sum().clamp_min(1e-12)
                denom = pred + true + DICE_SMOOTH
                score = (2 * inter + DICE_SMOOTH) / denom
                dice_saved = (m * score / denom, 2 * m / denom, p_true)  # a, b, p_true
                values.append(1.0 - (m * score).sum())
                continue
            if n_valid == 0:  # no labelled pixel, no signal
                coef = torch.zeros_like(nll)
            elif name == "ce":
                wv = vf if w_t is None else w_t * vf
                coef = wv / wv.sum()
            else:  # ohem, on the class-weighted per-pixel loss as nll_loss(weight=...) gives it
                per_pixel = nll if w_t is None else w_t * nll
                chosen, k = _ohem_pixels(per_pixel, valid, OHEM_THRESH, OHEM_MIN_SHARE)
                coef = chosen.to(nll.dtype) / k if w_t is None else chosen * w_t / k
            coefs.append(coef)
            # where: an unused pixel's nll may be inf (an ignored pixel, or a class weight of 0: the reference's
            # 0 * inf would make that NaN; here such a pixel adds nothing, as its weight says)
            values.append(torch.where(coef != 0, coef * nll, 0.0).sum())
        ctx.names, ctx.shape, ctx.dtype = names, (n, h, w, c), logits.dtype
        ctx.save_for_backward(prob, t, vf, *coefs, *dice_saved)
        return tuple(values)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with torch.autocast(grads[0].device.type, enabled=False):
            return _FusedTerms._backward(ctx, *grads)

    @staticmethod
    def _backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        prob, t, vf, *rest = ctx.saved_tensors
        n, h, w, c = ctx.shape
        if not bool(vf.any()):  # no labelled pixel: no gradient, even where an ignored pixel's logits are NaN
            return prob.new_zeros(n, h, w, c).to(ctx.dtype).permute(0, 3, 1, 2), None, None, None, None
        ce_grads = [g for name, g in zip(ctx.names, grads) if name != "dice"]
        coefs, dice_saved = rest[:len(ce_grads)], rest[len(ce_grads):]
        # per-pixel coefficients of the softmax (coef_p) and of the one-hot target (coef_t)
        coef_p = sum((g * cf for g, cf in zip(ce_grads, coefs)), torch.zeros_like(vf))
        coef_t = coef_p.clone()
        if dice_saved:
            a, b, p_true = dice_saved
            g_dice = grads[ctx.names.index("dice")] * vf
            bt_pt = b[t] * p_true
            coef_p = coef_p + g_dice * (bt_pt - prob @ a)
            coef_t = coef_t + g_dice * bt_pt
            grad = prob * a
            grad.mul_(g_dice.unsqueeze(1)).addcmul_(prob, coef_p.unsqueeze(1))
        else:
            grad = prob * coef_p.unsqueeze(1)
        grad.scatter_add_(1, t.unsqueeze(1), -coef_t.unsqueeze(1))
        return grad.to(ctx.dtype).view(n, h, w, c).permute(0, 3, 1, 2), None, None, None, None


def fused_terms(logits: torch.Tensor, target: torch.Tensor, names: Sequence[str], ignore_index: int = 255,
                weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The named terms (each of them in FUSED_TERMS, at their default settings) of one logits tensor, in
    one pass with a hand-written backward: the same values and gradients as the registered functions."""
    values = _FusedTerms.apply(logits, target, ignore_index, tuple(names), weight)
    return dict(zip(names, values))


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """'ce+dice' -> [('ce', 1.0), ('dice', 1.0)]; 'ce:1.0,dice:0.5' -> [('ce', 1.0), ('dice', 0.5)]."""
    parts = [p.strip() for p in spec.replace("+", ",").split(",") if p.strip()]
    if not parts:
        raise UserError(f"--loss '{spec}': empty; e.g. ce, ce+dice or ce:1.0,dice:0.5")
    terms = []
    for p in parts:
        name, _, w = p.partition(":")
        name = name.strip().lower()
        if name not in LOSSES:
            raise UserError(f"--loss: unknown loss '{name}'; choose from: {', '.join(LOSSES.names())}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"--loss: weight of '{name}' must be a number, got '{w}'") from None
        if not math.isfinite(weight) or weight < 0:
            # a negative weight maximises that loss; NaN/inf makes every step non-finite
            raise UserError(f"--loss '{spec}': weight {w} of '{name}' must be finite and >= 0")
        terms.append((name, weight))
    if not any(w for _, w in terms):
        raise UserError(f"--loss '{spec}': every weight is 0, nothing would be learned")
    return terms


class SegLoss(nn.Module):
    """Weighted sum of registered losses over the main output, plus weighted auxiliary-output terms.

    ``outputs`` is a logits tensor or a dict {"out": logits, name: logits, ...} (SegmentationModel in
    training). Auxiliary output ``aux`` (the FCN head of --aux-weight) is weighted by ``aux_weight``; any
    other by ``output_weights[name]`` (what the head declares, e.g. OCR's ``ocr_aux``). Returns
    (total, parts): parts holds each main term and each auxiliary output's unweighted loss.
    """

    def __init__(self, spec: str, ignore_index: int = 255, class_weights: Sequence[float] | None = None,
                 aux_weight: float = 0.4, output_weights: dict[str, float] | None = None, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused  # ce / ohem / dice mixes through fused_terms; False: autograd through the reference terms
        self.terms = parse_loss_spec(spec)
        self.ignore_index, self.aux_weight = ignore_index, aux_weight
        self.output_weights = {"aux": float(aux_weight), **(output_weights or {})}
        cw = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", cw, persistent=False)

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        names = [name for name, _ in self.terms]
        if self.fused and all(n in FUSED_TERMS for n in names) and len(set(names)) == len(names):
            parts = fused_terms(logits, target, names, self.ignore_index, self.class_weights)
        else:
            # several terms share one log-softmax (and its backward); a single term computes its own
            logp = F.log_softmax(logits.float(), 1) if len(self.terms) > 1 else None
            parts = {name: LOSSES.get(name)(logits, target, self.ignore_index, self.class_weights, log_probs=logp)
                     for name in names}
        total = sum(w * parts[name] for name, w in self.terms)
        return total, parts  # type: ignore[return-value]

    def forward(self, outputs: torch.Tensor | dict[str, torch.Tensor] | tuple[torch.Tensor, torch.Tensor],
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(outputs, tuple):  # (main, aux): the older calling convention
            outputs = {"out": outputs[0], "aux": outputs[1]}
        if not isinstance(outputs, dict):
            return self.single(outputs, target)
        total, parts = self.single(outputs["out"], target)
        for name, logits in outputs.items():
            if name == "out":
                continue
            if name not in self.output_weights:
                raise KeyError(f"auxiliary output '{name}' has no loss weight (known: {sorted(self.output_weights)})")
            aux_total, _ = self.single(logits, target)
            parts = {**parts, name: aux_total}
            total = total + self.output_weights[name] * aux_total
        return total, parts
