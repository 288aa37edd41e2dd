"""CamVid under a wall-clock training budget: train the CamVid recipe with --time, score it on test, write
BENCHMARKS.md.

One call = one budget (one row). The rows live in benchmarks/results/camvid_budget.json; every call
merges its row there and regenerates the table between the ``camvid-budget`` markers of BENCHMARKS.md
(the rest of that file, e.g. the ablation notes, is left as it is), so the points can be produced one
at a time, on different days.

Protocol (issue 12): the budget is the whole training command's wall time (data check, training,
validation, wrap-up), set with --time; the checkpoint is chosen on val; test is scored afterwards, outside
the budget, single scale, with the metrics at the native 360x480: each image goes in at the model's own
input size (its checkpoint's img_size, 360x480 for the main recipe, 288x384 for camvid_yolov8n_fast.py) and
its logits are resized back, as in val.py and predict.py. The latency columns time what a user of the row's
model pays per 360x480 frame: from the 360x480 image to 360x480 logits, a model with a smaller input size
timed with the image resized to it and its logits resized once back to the frame's size (the engine's path,
and a static export with --out-size 360 480). Rows timed before 2026-12-07 evening timed such a model at its
own input size without either resize; the table marks them.

Usage:
    python benchmarks/camvid_budget.py --minutes 60                       # the headline row
    python benchmarks/camvid_budget.py --minutes 15 --seed 1              # seed noise: a second 15-min run
    python benchmarks/camvid_budget.py --minutes 15 --label "15 min, no crop" --group ablation -- --crop 360 480
    python benchmarks/camvid_budget.py --retime "60 min, seed 0"          # time a stored row's model again
    python benchmarks/camvid_budget.py --minutes 30 --data data/camvid_holdout.yaml --split val -- --lr0 1e-3
Flags after ``--`` go to the recipe unchanged (they override its preset). ``--retime`` re-measures only the
latency columns of a stored row from its run's best.pt (when something else ran during the first timing)
and keeps everything else of the row. ``--split val`` makes a selection row: the run is scored on its data's
val split (data/camvid_holdout.yaml: a sequence the model never trains on), test is never read, and the row
goes to a table of its own, for choosing a setting before it is trained on all of train and scored on test.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
RECIPE = "unet-lite/yolo8-seg/camvid_yolov8n.py"
START, END = "<!-- camvid-budget:start -->", "<!-- camvid-budget:end -->"
GROUPS = ("budget", "ablation", "heads", "selection")  # the order of the rows in the tables


def split_recipe_flags(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(the script's own flags, the flags after ``--`` that go to the recipe unchanged)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The script's flags, and the flags after ``--`` that go to the recipe."""
    argv, extra = split_recipe_flags(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=None, help="training budget (the recipe's --time, in minutes)")
    p.add_argument("--retime", metavar="LABEL", default=None,
                   help="no training: time the stored row LABEL's best.pt again and replace its latency columns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default=RECIPE, help="the training script (a unet-lite/ recipe)")
    p.add_argument("--data", default="data/camvid.yaml")
    p.add_argument("--label", default=None, help="row name (default: '<minutes> min, seed <seed>')")
    p.add_argument("--group", default="budget", choices=[g for g in GROUPS if g != "selection"],
                   help="budget: the recipe as shipped; ablation: one change; heads: a head on the same budget")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="the split the row is scored on: test (the protocol's figure) or val (a selection row: "
                        "data whose val the model never trains on, e.g. data/camvid_holdout.yaml; test is not read)")
    p.add_argument("--project", default="runs/camvid-budget")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--store", default="benchmarks/results/camvid_budget.json")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the inference timing")
    p.add_argument("--picture", default=None, help="also write input | truth | prediction rows for 4 test images here")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if (a.minutes is None) == (a.retime is None):
        p.error("give --minutes (train and score a budget) or --retime LABEL (time a stored row again)")
    if a.retime is not None and (extra or a.label or a.picture or a.split != "test"):
        p.error("--retime times a stored row as it is: no recipe flags, --label, --picture or --split with it")
    if a.split == "val" and a.picture:
        p.error("--picture shows test images, which a selection row (--split val) never reads")
    return a, extra


def train(a: argparse.Namespace, extra: list[str], name: str) -> tuple[Path, float, float]:
    """Run the recipe as its own process under the budget; (run dir, wall seconds, peak RSS in GiB)."""
    cmd = [sys.executable, a.recipe, "--data", a.data, "--time", f"{a.minutes / 60:.6g}", "--seed", str(a.seed),
           "--project", a.project, "--name", name, "--exist-ok", *extra]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    # this child's own peak (KiB on Linux): RUSAGE_CHILDREN would be the running maximum over every child
    # this process has had, wrong for the second and later heads of camvid_heads.py
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"training failed (exit code {rc}): {' '.join(cmd)}")
    return (REPO / a.project / name).resolve(), wall, usage.ru_maxrss / 2 ** 20


def training_figures(run: Path, best_epoch: int) -> dict[str, Any]:
    """Epochs reached, the val mIoU of best.pt's epoch and training images/s (step time only), from results.csv.

    The val column is that of the checkpoint scored on test: the highest val by default, the last scored
    epoch's under --best final.
    """
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["train/img_per_s"]) for r in rows if r.get("train/img_per_s") not in (None, "", "nan")]
    val = [float(r["val/mIoU"]) for r in rows if int(r["epoch"]) == best_epoch and r.get("val/mIoU")]
    if not val:
        raise SystemExit(f"{run / 'results.csv'}: no val mIoU for best.pt's epoch {best_epoch}")
    return {"epochs": len(rows), "val_mIoU": val[0], "img_per_s": statistics.median(speeds) if speeds else float("nan")}


FRAME = (360, 480)  # CamVid's frames: every latency is the frame in, logits at its size out


def latencies(weights: Path, threads: int, onnx: bool, size: tuple[int, int] = FRAME) -> dict[str, Any]:
    """Inference ms per 360x480 frame at batch 1, from the image to logits at its size: the fused PyTorch
    model and, with onnx, ONNX Runtime (fp32). A model whose input ``size`` is smaller gets the image resized
    to it and its logits resized once back to the frame, both inside the timed call (the PyTorch path runs
    ``model(small, frame)`` as segment/inference.py does; the ONNX graph is an export with --out-size)."""
    import torch

    from benchmarks.peer_speed import Rescaled
    from segment.benchmark import cpu_latency_ms
    from segment.common import load_model

    size = (int(size[0]), int(size[1]))  # a JSON list from a stored row compares unequal to the tuple
    torch.set_num_threads(threads)
    model, _ = load_model(weights, torch.device("cpu"), fuse=True)
    model.aux_head = None
    net = model if size == FRAME else Rescaled(model, size)
    out: dict[str, Any] = {"torch_ms": cpu_latency_ms(net, FRAME, runs=20, warmup=3, passes=3),
                           "timed": f"{FRAME[0]}x{FRAME[1]} image -> {FRAME[0]}x{FRAME[1]} logits"}
    if onnx:
        try:
            out["ort_ms"] = _ort_ms(weights, threads, size)
        except Exception as e:  # an optional column: never the loss of a training hour
            print(f"warning: no ONNX Runtime latency ({type(e).__name__}: {e})", flush=True)
    return out


def _ort_ms(weights: Path, threads: int, size: tuple[int, int]) -> float:
    """ONNX Runtime fp32 ms per frame at batch 1 (best of 3 medians of 20) of a fresh static export at
    ``size``; a smaller size is exported with --out-size to the frame, and the image's resize to ``size`` is
    timed with the call."""
    import tempfile

    import torch
    import torch.nn.functional as F

    from segment import export
    from segment.benchmark import best_median_ms
    from segment.onnx_backend import OnnxBackend

    rescale = size != FRAME
    x = torch.rand(1, 3, *FRAME)
    # The frame's resize runs on one torch thread: torch's pool and ORT's, interleaved call by call on two cores,
    # contend (a 256x352 graph: 11-14 ms alone, 20-21 ms with a 2-thread torch resize between calls, 15.5 with
    # a 1-thread one; 2026-12-07, BENCHMARKS.md), and the column is the model's cost, not that artefact's.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "model.onnx"
            export.run(weights=weights, img_size=list(size), output=str(dst), threads=threads, exist_ok=True,
                       out_size=list(FRAME) if rescale else None)
            backend = OnnxBackend(dst, threads=threads)

            def call() -> torch.Tensor:
                small = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if rescale else x
                return backend(small)

            if tuple(call().shape[-2:]) != FRAME:
                raise RuntimeError(f"the export at {size} returned logits of another size than the frame's")
            return best_median_ms(call, runs=20, warmup=2, passes=3)
    finally:
        torch.set_num_threads(torch_threads)


def picture(weights: Path, data_yaml: str, path: Path, n: int = 4) -> None:
    """input | truth | prediction for ``n`` test images spread over the split (the predict.py path)."""
    import cv2
    import numpy as np

    from segment.predict import Predictor
    from utils.dataconfig import load_data_config
    from utils.imageio import decode_image
    from utils.masks import find_mask, read_mask
    from utils.plots import colorize, overlay, save_image

    data = load_data_config(data_yaml)
    images = data.split_images("test")
    pick = [images[int(i)] for i in np.linspace(0, len(images) - 1, n)]
    pred = Predictor(str(weights), device="cpu")
    rows = []
    for img_path in pick:
        rgb = decode_image(img_path)
        truth = read_mask(find_mask(img_path, data.images_dir, data.masks_dir), data.mask_spec, rgb.shape[:2])
        p = pred(rgb)
        rows.append(np.concatenate([rgb, overlay(rgb, colorize(truth, data.palette, data.ignore_index)),
                                    overlay(rgb, colorize(p, data.palette, data.ignore_index))], 1))
    grid = np.concatenate(rows, 0)
    # half size: enough to see poles and people, small enough for a README
    grid = cv2.resize(grid, (grid.shape[1] // 2, grid.shape[0] // 2), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(path, grid)


def _commit(outputs: tuple[str, ...] = ()) -> str:
    """The code the row was measured with: short commit, '+dirty' when the tree had changes other than
    ``outputs`` (the table and the store this script itself rewrites after every row)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        inside = []
        for o in outputs:
            try:
                inside.append((REPO / o).resolve().relative_to(REPO.resolve()).as_posix())
            except ValueError:  # written outside the checkout: not part of its status anyway
                pass
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 *(f":(exclude,literal){o}" for o in inside)], cwd=REPO, capture_output=True, text=True)
        if not head or status.returncode:
            return "unknown"
        return head + ("+dirty" if status.stdout.strip() else "")
    except OSError:
        return "unknown"


def _test_cell(r: dict[str, Any]) -> str:
    """Test mIoU in bold, with its 95% bootstrap interval over the test images when the row has one."""
    return _miou_cell(r["test_mIoU"], r.get("test_interval"))


def _miou_cell(miou: float, iv: list[float | None] | None) -> str:
    """An mIoU in bold, with its 95% bootstrap interval over the images when there is one."""
    shown = iv is not None and all(isinstance(v, (int, float)) for v in iv)  # null: the draws had no mIoU
    return f"**{100 * miou:.1f}**" + (f" ({100 * iv[0]:.1f}-{100 * iv[1]:.1f})" if shown else "")


def _per_class(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    """A per-class IoU table (%), one line per row."""
    out = ["| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    return out + [f"| {r['label']} | " + " | ".join(f"{100 * r['per_class'][n]:.1f}" for n in names) + " |"
                  for r in rows]


def format_tables(rows: dict[str, dict[str, Any]]) -> str:
    """The Markdown between the markers: the budget and ablation table, the heads table, per-class test IoU."""
    if not rows:
        return ""
    ordered = sorted(rows.values(), key=lambda r: (GROUPS.index(r["group"]), r["minutes"], r["seed"], r["label"]))
    names = list(ordered[0]["per_class"])
    runs = [r for r in ordered if r["group"] in ("budget", "ablation")]
    heads = [r for r in ordered if r["group"] == "heads"]
    chosen = [r for r in ordered if r["group"] == "selection"]
    out: list[str] = []
    if runs:
        out += ["| run | budget (min) | seed | test mIoU (95% CI) | val mIoU | epochs | train img/s | wall (min) | "
                "PyTorch ms/img | ORT ms/img | peak RSS (GiB) | date, CPU, commit |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in runs:
            mark = "*" if _untimed_resizes(r) else ""
            out.append(f"| {r['label']} | {r['minutes']:g} | {r['seed']} | {_test_cell(r)} | "
                       f"{100 * r['val_mIoU']:.1f} | {r['epochs']} | {r['img_per_s']:.1f} | {r['wall_s'] / 60:.1f} | "
                       f"{_ms(r['torch_ms'], mark)} | {_ms(r.get('ort_ms'), mark)} | {r['peak_rss_gib']:.2f} | {_stamp(r)} |")
        if any(_untimed_resizes(r) for r in runs):
            out += ["", "ms/img: from the 360x480 frame to 360x480 logits, every resize included; * = timed at the "
                    "model's own smaller input size without the frame's resize to it and the logits' back (rows "
                    "timed before 2026-12-07 evening)."]
    if heads:
        out += [""] if out else []
        out += ["Heads at one budget (benchmarks/camvid_heads.py: the recipe with only `--head` "
                "changed; params and GFLOPs at 360x480):", "",
                "| run | params (M) | GFLOPs | test mIoU (95% CI) | val mIoU | epochs | train img/s | PyTorch ms/img | "
                "ORT ms/img | peak RSS (GiB) | date, CPU, commit |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in heads:
            out.append(f"| {r['label']} | {r.get('params', float('nan')) / 1e6:.2f} | {r.get('gflops', float('nan')):.2f} | "
                       f"{_test_cell(r)} | {100 * r['val_mIoU']:.1f} | {r['epochs']} | "
                       f"{r['img_per_s']:.1f} | {_ms(r['torch_ms'])} | {_ms(r.get('ort_ms'))} | {r['peak_rss_gib']:.2f} | "
                       f"{_stamp(r)} |")
    scored = runs + heads
    if scored:
        out += ["", "Test IoU per class (%):", ""] + _per_class(scored, names)
    if chosen:
        out += [""] if out else []
        out += ["Selection runs (`--split val`: scored on the val split of their data, a sequence the model never "
                "trains on; test is not read; best.pt as the recipe chooses it):", "",
                "| run | data | budget (min) | seed | val mIoU (95% CI) | epochs | train img/s | wall (min) | "
                "peak RSS (GiB) | date, CPU, commit |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in chosen:
            out.append(f"| {r['label']} | {Path(r['data']).name} | {r['minutes']:g} | {r['seed']} | "
                       f"{_miou_cell(r['val_mIoU'], r.get('val_interval'))} | {r['epochs']} | {r['img_per_s']:.1f} | "
                       f"{r['wall_s'] / 60:.1f} | {r['peak_rss_gib']:.2f} | {_stamp(r)} |")
        out += ["", "Val IoU per class (%), selection runs:", ""] + _per_class(chosen, names)
    out += ["", "Commands (flags after the recipe name override its preset):", ""]
    out += [f"- {r['label']}: `{r['command']}`" for r in ordered]
    machines = sorted({r["machine"] for r in ordered})
    out += ["", "Machine: " + "; ".join(machines) + "."]
    return "\n".join(out)


def _stamp(r: dict[str, Any]) -> str:
    """'date, CPU, commit': rows from different VMs sit side by side, and their speeds are not comparable."""
    cpu = re.sub(r"\(R\)|\bProcessor\b", "", r["machine"].split(",")[0]).strip()
    return f"{r['date']}, {cpu}, {r.get('commit', '?')}"


def _ms(value: float | None, mark: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{mark}"


def _untimed_resizes(r: dict[str, Any]) -> bool:
    """A row timed before the latency columns became frame in, logits out (no ``timed``) whose model ran at
    another input size than the frame's: its figures leave out the two resizes."""
    return "timed" not in r and tuple(r.get("infer_size") or FRAME) != FRAME


def merge(store: Path, out: Path, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Add/replace ``row`` in the JSON store and rewrite the marked section of ``out``."""
    from utils.files import atomic_write_text

    rows: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else {}
    rows[row["label"]] = row
    store.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store, json.dumps(rows, indent=2))  # insertion order keeps the class order
    section = f"{START}\n{format_tables(rows)}\n{END}"
    text = out.read_text() if out.is_file() else "# Benchmarks\n\n## CamVid under a training budget\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(out, text)
    return rows


def _in_repo(path: str) -> Path:
    """A relative --out/--store is relative to the repository, not to where the script was started."""
    return Path(path) if os.path.isabs(path) else REPO / path


def retime(a: argparse.Namespace) -> dict[str, Any]:
    """Time a stored row's best.pt again (its input size, --threads, the same method) and merge the new
    latency columns; the first figures stay in the row under retimed.before."""
    store = _in_repo(a.store)
    rows: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else {}
    if a.retime not in rows:
        raise SystemExit(f"--retime: no row '{a.retime}' in {store}; rows: {', '.join(rows)}")
    row = dict(rows[a.retime])
    if row["group"] == "selection":
        raise SystemExit(f"--retime: '{a.retime}' is a selection row, which has no latency columns")
    best = Path(row["run"]) / "weights" / "best.pt"
    if not best.is_file():
        raise SystemExit(f"--retime: the row's checkpoint {best} is not on this machine")
    size = tuple(row.get("infer_size") or (360, 480))
    from segment.benchmark import machine

    # the first timing is kept through any number of retimes; a column not timed again is emptied, not kept
    before = row.get("retimed", {}).get("before") or {k: row.get(k) for k in ("torch_ms", "ort_ms")}
    row.update({"torch_ms": None, "ort_ms": None, **latencies(best, a.threads, onnx=not a.no_onnx, size=size)})  # type: ignore[arg-type]
    row["retimed"] = {"date": datetime.date.today().isoformat(), "machine": machine(), "threads": a.threads,
                      "before": before}
    merge(store, _in_repo(a.out), row)
    print(f"{a.retime}: PyTorch {before['torch_ms']} -> {row['torch_ms']:.1f} ms/img, "
          f"ORT {before['ort_ms']} -> {row.get('ort_ms')} ms/img")
    return row


def _main(argv: list[str] | None) -> dict[str, Any]:
    a, extra = parse_args(argv)
    if a.retime is not None:
        return retime(a)
    from segment import val
    from segment.benchmark import machine
    from utils.checkpoint import load_checkpoint
    from utils.dataconfig import EmptySplitError, load_data_config

    try:  # before the hour of training: a split to score that the data does not have is refused now, not after it
        load_data_config(a.data).split_images(a.split)
    except EmptySplitError as e:
        hint = "; --split val scores a selection row on val instead" if a.split == "test" else ""
        raise EmptySplitError(f"--split {a.split}: {e}{hint}") from None
    selection = a.split == "val"
    label = a.label or f"{a.minutes:g} min, seed {a.seed}" + (f", {Path(a.data).stem}" if selection else "")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")  # a run folder name the trainer accepts
    commit = _commit((a.out, a.store))  # before training: commits made while it runs are not the code that trained
    run, wall, peak = train(a, extra, name)
    best = run / "weights" / "best.pt"
    best_epoch = int(load_checkpoint(best)["epoch"])
    # the checkpoint's own input size (--val-size if the run set one), the one val.py and predict.py use for
    # it; the metrics are at each mask's own size (CamVid: 360x480)
    scores = val.run(weights=best, data=a.data, split=a.split, project=str(run / a.split), name="exp", exist_ok=True,
                     bootstrap=1000)
    size = (int(scores["img_size"][0]), int(scores["img_size"][1]))
    row: dict[str, Any] = {
        "label": label, "group": "selection" if selection else a.group, "minutes": a.minutes, "seed": a.seed,
        "command": " ".join(["python", a.recipe, "--data", a.data, "--time", f"{a.minutes / 60:.6g}",
                             "--seed", str(a.seed), *extra]),
        "data": a.data, "params": scores["params"], "gflops": scores["gflops"],
        # after the trainer's figures: on a selection row the scored val (with its interval) is the val column
        **training_figures(run, best_epoch),
        f"{a.split}_mIoU": scores["mIoU"], f"{a.split}_interval": [scores["bootstrap"]["lo"], scores["bootstrap"]["hi"]],
        "per_class": {k: v["iou"] for k, v in scores["per_class"].items()},
        "best_epoch": best_epoch, "wall_s": wall, "peak_rss_gib": peak,
        "infer_size": list(size), "machine": machine(), "date": datetime.date.today().isoformat(), "run": str(run),
        "commit": commit,
    }
    if not selection:  # a selection row chooses a setting; what the chosen model costs is timed on its test row
        row.update({"ort_ms": None, **latencies(best, a.threads, onnx=not a.no_onnx, size=size)})
    if a.picture:
        picture(best, a.data, Path(a.picture))
    merge(_in_repo(a.store), _in_repo(a.out), row)
    scored = (f"val mIoU {100 * row['val_mIoU']:.1f} (test not read)" if selection else
              f"test mIoU {100 * row['test_mIoU']:.1f} (val {100 * row['val_mIoU']:.1f})")
    print(f"{label}: {scored}, {row['epochs']} epochs, {wall / 60:.1f} min wall, peak RSS {peak:.2f} GiB"
          + ("" if selection else f", {row['torch_ms']:.1f} ms/img PyTorch")
          + (f", {row['ort_ms']:.1f} ms/img ORT" if row.get("ort_ms") is not None else ""))
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""
    from segment.common import cli_entry, setup_runtime

    setup_runtime()
    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
