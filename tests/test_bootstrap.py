"""Bootstrap intervals of mIoU: hand-built per-image matrices, the evaluation's per-image record, val.py's
--bootstrap / --compare, and the refusals that leave no run folder."""
import json

import pytest
import torch

from segment import val
from segment.evaluate import eval_loader, evaluate
from tests.conftest import write_dataset
from tests.test_predict import make_checkpoint
from utils.dataconfig import load_data_config
from utils.errors import UserError
from utils.metrics import _resampled_mious, bootstrap_miou, paired_bootstrap_miou

# Two 2-class images, counted by hand (rows truth, columns prediction):
#   A = [[3, 1], [0, 4]]: IoU 3/4 and 4/5 -> mIoU 0.775
#   B = [[2, 0], [2, 2]]: IoU 2/4 and 2/4 -> mIoU 0.5
#   A + B = [[5, 1], [2, 6]]: IoU 5/8 and 6/9 -> mIoU 0.6458333...
A = torch.tensor([[3, 1], [0, 4]])
B = torch.tensor([[2, 0], [2, 2]])
MIOU_A, MIOU_B, MIOU_AB = 0.775, 0.5, (5 / 8 + 6 / 9) / 2


def test_identical_images_give_a_zero_width_interval():
    b = bootstrap_miou(A.repeat(5, 1, 1), resamples=300)
    assert b["mIoU"] == pytest.approx(MIOU_A) and b["lo"] == pytest.approx(MIOU_A) and b["hi"] == pytest.approx(MIOU_A)
    assert b["images"] == 5 and b["resamples"] == 300 and b["level"] == 0.95


def test_two_images_draw_aa_ab_bb_with_probabilities_a_quarter_a_half_a_quarter():
    vals = _resampled_mious([torch.stack([A, B])], 4000, seed=1)[0]
    share = {v: float((vals - v).abs().lt(1e-12).double().mean()) for v in (MIOU_A, MIOU_AB, MIOU_B)}
    assert sum(share.values()) == pytest.approx(1.0)  # no other value can come out
    assert share[MIOU_A] == pytest.approx(0.25, abs=0.03) and share[MIOU_AB] == pytest.approx(0.5, abs=0.03)
    b = bootstrap_miou(torch.stack([A, B]), resamples=4000, seed=1)
    # 2.5% and 97.5% fall inside the quarter of BB and of AA draws: the interval is exactly their mIoUs
    assert b["mIoU"] == pytest.approx(MIOU_AB) and b["lo"] == pytest.approx(MIOU_B) and b["hi"] == pytest.approx(MIOU_A)


def test_a_class_absent_from_a_draw_leaves_its_mean():
    only0 = torch.tensor([[4, 0], [0, 0]])  # class 1 neither present nor predicted: IoU NaN
    vals = _resampled_mious([torch.stack([only0, B])], 2000, seed=0)[0]
    assert not torch.isnan(vals).any()
    assert vals.max() == pytest.approx(1.0)  # the draw of two only0 images: class 0 alone, perfect


def test_a_draw_of_only_fully_ignored_images_is_left_out():
    empty = torch.zeros(2, 2, dtype=torch.int64)  # every pixel ignored: no class, no mIoU
    b = bootstrap_miou(torch.stack([A, empty]), resamples=400)
    # draws: {A, A} and {A, empty} score A's 0.775; {empty, empty} has no mIoU and must not void the interval
    assert b["lo"] == pytest.approx(MIOU_A) and b["hi"] == pytest.approx(MIOU_A)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero_and_a_uniform_lead_is_certain():
    imgs = torch.stack([A, B, A + B])
    same = paired_bootstrap_miou(imgs, imgs.clone(), resamples=500)
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0 and same["a_ahead"] == 0
    perfect = torch.stack([torch.diag(m.sum(1)) for m in imgs])  # every pixel right, same truth
    lead = paired_bootstrap_miou(perfect, imgs, resamples=500)
    # imgs summed = 2 (A + B) = [[10, 2], [4, 12]]: IoU 10/16 and 12/18, the mIoU of A + B
    assert lead["mIoU_a"] == 1.0 and lead["mIoU_b"] == pytest.approx(MIOU_AB)
    assert lead["diff"] == pytest.approx(1.0 - MIOU_AB) and lead["lo"] > 0 and lead["a_ahead"] == 1.0


def test_bad_shapes_and_settings_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap_miou(torch.stack([A, B]), A[None], resamples=10)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_miou(A[None], resamples=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_miou(A[None], level=1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("boot")
    data = write_dataset(tmp / "data", {"train": 2, "val": 5}, hw=(40, 56))
    return tmp, data, make_checkpoint(tmp / "a.pt", data), make_checkpoint(tmp / "b.pt", data, seed=1)


def test_evaluate_keeps_one_matrix_per_image_that_sum_to_the_split(setup):
    tmp, data, a, _ = setup
    from segment.inference import load_backend

    cfg = load_data_config(data)
    backend = load_backend(a, torch.device("cpu"))
    res = evaluate(backend, eval_loader(cfg, "val", (40, 56), 2, 0), cfg, torch.device("cpu"), per_image=True,
                   progress=False)
    assert res.per_image is not None and res.per_image.shape == (5, 3, 3) and res.per_image.dtype == torch.int32
    assert torch.equal(res.per_image.sum(0).long(), res.confusion)
    assert (res.per_image.sum((1, 2)) == 40 * 56 - 2).all()  # every pixel but the two ignored ones
    off = evaluate(backend, eval_loader(cfg, "val", (40, 56), 2, 0), cfg, torch.device("cpu"), progress=False)
    assert off.per_image is None and torch.equal(off.confusion, res.confusion)


def test_val_bootstrap_and_compare_write_their_figures(setup, capsys):
    tmp, data, a, b = setup
    out = val.main(["--weights", str(a), "--bootstrap", "200", "--compare", str(b), "--project", str(tmp / "v"),
                    "--name", "ab", "--workers", "0"])
    saved = json.loads((tmp / "v" / "ab" / "metrics.json").read_text())
    boot, cmp_ = saved["bootstrap"], saved["compare"]
    assert boot["lo"] <= saved["mIoU"] <= boot["hi"] and boot["images"] == 5 and boot["resamples"] == 200
    assert cmp_["mIoU_a"] == pytest.approx(saved["mIoU"]) and cmp_["weights"] == str(b)
    alone = val.main(["--weights", str(b), "--project", str(tmp / "v"), "--name", "b", "--workers", "0"])
    assert cmp_["mIoU_b"] == pytest.approx(alone["mIoU"]) and "bootstrap" not in alone
    assert cmp_["diff"] == pytest.approx(out["mIoU"] - alone["mIoU"]) and cmp_["lo"] <= cmp_["diff"] <= cmp_["hi"]
    text = capsys.readouterr().out
    assert "95% bootstrap interval" in text and "paired bootstrap interval" in text


def test_compare_a_model_with_itself_at_another_size(setup):
    tmp, data, a, _ = setup
    same = val.main(["--weights", str(a), "--compare", str(a), "--project", str(tmp / "v"), "--name", "self",
                     "--workers", "0"])["compare"]
    assert same["diff"] == 0 and same["a_ahead"] == 0 and same["resamples"] == 1000  # the default with --compare
    other = val.main(["--weights", str(a), "--compare", str(a), "--compare-img-size", "32", "48", "--project",
                      str(tmp / "v"), "--name", "small", "--workers", "0"])["compare"]
    assert other["img_size"] == [32, 48] and other["diff"] != 0  # a different input size predicts differently


def test_refusals_name_the_flag_and_write_nothing(setup, tmp_path):
    tmp, data, a, _ = setup
    two = write_dataset(tmp_path / "two", {"train": 1, "val": 1}, nc=2)
    b2 = make_checkpoint(tmp_path / "two.pt", two, nc=2)
    runs = tmp_path / "runs"
    cases = [
        (["--compare", str(tmp_path / "missing.pt")], "missing.pt: checkpoint not found"),
        (["--compare", str(tmp_path / "m.bin")], "--compare .*m.bin: file not found"),
        (["--compare", str(b2)], "--compare .*two.pt: model has 2 classes but .* has 3"),
        (["--compare-img-size", "32"], "--compare-img-size: only with --compare"),
        (["--bootstrap", "-1"], "--bootstrap -1"),
        (["--compare", str(a), "--compare-img-size", "32", "--slide", "32"], "--compare-img-size: not with --slide"),
    ]
    for extra, message in cases:
        with pytest.raises(UserError, match=message):
            val.run(weights=str(a), project=str(runs), workers=0, **_kwargs(extra))
        assert not runs.exists()


def _kwargs(argv: list[str]) -> dict:
    """['--compare-img-size', '32'] -> {'compare_img_size': [32]}, the way the parser would type them."""
    args = val.build_parser().parse_args(["--weights", "x"] + argv)
    return {k: getattr(args, k) for k in ("compare", "compare_img_size", "bootstrap", "slide")}
