"""Run a trained model (.pt or .onnx) on images, folders, globs, .txt lists and videos.

Usage:
    python segment/predict.py --weights runs/train/exp/weights/best.pt --source path/to/images
    python segment/predict.py --weights best.pt --source clip.mp4
    python segment/predict.py --weights best.onnx --source list.txt --slide 360 480 --tta --save-conf

Python:
    from segment.predict import Predictor
    p = Predictor("best.pt")
    mask = p("image.jpg")              # (H, W) uint8 class ids at the image's size
    probs = p.probabilities(image_rgb)  # (nc, H, W) float32

Per image: masks/<stem>.png (class ids at the source's size; uint16 when nc > 255), color/<stem>.png,
overlay/<stem>.jpg and, with --save-conf, conf/<stem>.png (max probability x 255). A video gives
<stem>.mp4 (overlay, same frame count and fps). The masks are exactly what val.py scores.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from segment.common import add_common_flags, cli_entry, parse_img_size, setup_runtime
from segment.inference import (Backend, InferenceConfig, check_backend_config, inference_config, load_backend,
                               predict_batch, prepare, read_image)
from segment.val import add_inference_flags
from utils.errors import UserError
from utils.files import atomic_write, run_dir
from utils.plots import colorize, default_palette, overlay
from utils.torch_utils import select_device

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class Predictor:
    """A model ready to segment images: ``Predictor("best.pt")(image_or_path) -> (H, W) class ids``.

    Images are paths or RGB uint8 arrays (H, W, 3) (grey (H, W) is accepted). Outputs are at the image's
    own size. ``names`` stands in for the class names of an .onnx without them.
    """

    def __init__(self, weights: str | os.PathLike, device: str = "", img_size: Sequence[int] | None = None,
                 slide: Sequence[int] | None = None, overlap: float = 1 / 3, slide_scale: float = 1.0,
                 tta: bool = False, tta_scales: Sequence[float] | None = None, flip: bool = True,
                 batch_size: int = 8, names: Sequence[str] | None = None, half: bool = False,
                 ignore_index: int | None = None, palette: Sequence[Sequence[int]] | None = None) -> None:
        self.device = select_device(device)
        self.cfg: InferenceConfig = inference_config(slide, overlap, slide_scale, tta, tta_scales, not flip, batch_size)
        self.backend: Backend = load_backend(weights, self.device, names=names, amp=half, ignore_index=ignore_index,
                                             palette=palette)
        meta = self.backend.meta
        fixed = tuple(self.backend.fixed_size) if self.backend.fixed_size else None
        self.img_size = parse_img_size(img_size or meta.get("img_size") or fixed)
        check_backend_config(self.backend, self.cfg, self.img_size)
        self.nc = int(meta["nc"])
        self.names = list(meta.get("names") or [str(i) for i in range(self.nc)])
        self.ignore_index = int(255 if meta.get("ignore_index") is None else meta["ignore_index"])
        self.palette = [tuple(c) for c in meta["palette"]] if meta.get("palette") else default_palette(self.nc)
        self.dtype = np.uint16 if max(self.nc, self.ignore_index + 1) > 256 else np.uint8
        self.batch_size = batch_size

    def _as_rgb(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image(Path(image))
        a = np.asarray(image)
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
            raise UserError(f"Predictor: expected an RGB uint8 array (H, W, 3), got {a.dtype} {a.shape}")
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, 2)
        return np.ascontiguousarray(a[..., :3])

    def scores(self, images: Sequence[np.ndarray], probs: bool = False) -> list[torch.Tensor]:
        """(nc, H, W) scores per RGB image: logits (or TTA probabilities), probabilities when ``probs``."""
        if self.cfg.slide:  # native size: every image alone, its windows batched
            return [predict_batch(self.backend, prepare(im, None)[None], [im.shape[:2]], self.cfg, self.device,
                                  probs)[0] for im in images]
        batch = torch.stack([prepare(im, self.img_size) for im in images])
        return predict_batch(self.backend, batch, [im.shape[:2] for im in images], self.cfg, self.device, probs)

    def masks(self, images: Sequence[np.ndarray], with_conf: bool = False
              ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(class-id mask, max-probability map or None) per RGB image."""
        out = []
        for s in self.scores(images, probs=with_conf):
            conf, ids = s.max(0)
            out.append((ids.cpu().numpy().astype(self.dtype), conf.float().cpu().numpy() if with_conf else None))
        return out

    def __call__(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """(H, W) class ids of one image (uint8; uint16 when there are more than 256 ids)."""
        return self.masks([self._as_rgb(image)])[0][0]

    def probabilities(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """(nc, H, W) float32 class probabilities of one image (summing to 1 per pixel)."""
        if getattr(self.backend, "outputs_labels", False):
            raise UserError(f"{self.backend}: an --argmax graph outputs class ids, not probabilities; "
                            f"export without --argmax for probabilities")
        return self.scores([self._as_rgb(image)], probs=True)[0].float().cpu().numpy()


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """One input: an image or a video file, or an entry that failed to resolve (``error``)."""

    path: Path
    video: bool = False
    error: str | None = None


def _kind(p: Path) -> str | None:
    ext = p.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def resolve_sources(source: str) -> list[Source]:
    """--source -> inputs in a stable order. A .txt lists one path per line (relative to the list's folder)."""
    looked = f"images ({' '.join(IMAGE_EXTS)}) or videos ({' '.join(VIDEO_EXTS)})"
    p = Path(source)
    out: list[Source] = []
    if any(c in source for c in "*?[") and not p.exists():
        for f in sorted(glob.glob(source, recursive=True)):
            fp = Path(f)
            if fp.is_file() and _kind(fp):
                out.append(Source(fp, _kind(fp) == "video"))
        if not out:
            raise UserError(f"--source {source}: the pattern matches no {looked}")
        return out
    if p.is_dir():
        out = [Source(f, _kind(f) == "video") for f in sorted(p.iterdir()) if f.is_file() and _kind(f)]
        if not out:
            raise UserError(f"--source {source}: the folder holds no {looked}")
        return out
    if not p.exists():
        raise UserError(f"--source {source}: no such file or folder (give an image, a folder, a glob, a .txt list "
                        f"or a video)")
    if p.suffix.lower() == ".txt":
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--source {source}: cannot read the list ({type(e).__name__})") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            f = Path(line) if Path(line).is_absolute() else p.parent / line
            kind = _kind(f)
            if not f.is_file():
                out.append(Source(f, error="file not found"))
            elif kind is None:
                out.append(Source(f, error=f"not an image or video ({f.suffix or 'no extension'})"))
            else:
                out.append(Source(f, kind == "video"))
        if not out:
            raise UserError(f"--source {source}: the list names no files (one path per line)")
        return out
    if _kind(p) is None:
        raise UserError(f"--source {source}: not an image or video file (looked for {looked})")
    return [Source(p, _kind(p) == "video")]


def unique_stems(sources: Sequence[Source]) -> list[str]:
    """Output names: the file stems, with _2, _3 ... where two inputs share one (a .txt over several folders)."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        stem = s.path.stem
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}_{n}")
    return out


# ---------------------------------------------------------------------------------------------- writing
def _write_png(path: Path, array: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(path.suffix, array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))


class Writer:
    """Writes masks/, color/, overlay/ (and conf/) for each image of one run."""

    def __init__(self, save_dir: Path, pred: Predictor, classes: Sequence[int] | None, save_conf: bool) -> None:
        self.dir, self.pred, self.save_conf = save_dir, pred, save_conf
        self.keep = np.isin(np.arange(max(pred.nc, pred.ignore_index + 1)), classes) if classes is not None else None

    def filter(self, mask: np.ndarray) -> np.ndarray:
        """--classes: pixels of other classes become the ignore index."""
        if self.keep is None:
            return mask
        return np.where(self.keep[mask], mask, np.asarray(self.pred.ignore_index, mask.dtype))

    def paint(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(colour mask, overlay) as RGB; pixels without a kept class keep the image in the overlay."""
        color = colorize(mask, self.pred.palette, self.pred.ignore_index)
        over = overlay(rgb, color)
        if self.keep is not None:
            dropped = mask == self.pred.ignore_index
            over[dropped] = rgb[dropped]
        return color, over

    def image(self, stem: str, rgb: np.ndarray, mask: np.ndarray, conf: np.ndarray | None) -> None:
        mask = self.filter(mask)
        color, over = self.paint(rgb, mask)
        _write_png(self.dir / "masks" / f"{stem}.png", mask)
        _write_png(self.dir / "color" / f"{stem}.png", color[..., ::-1])
        _write_png(self.dir / "overlay" / f"{stem}.jpg", over[..., ::-1])
        if conf is not None:
            _write_png(self.dir / "conf" / f"{stem}.png", np.round(conf * 255).astype(np.uint8))


def _open_video(path: Path) -> Any:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"{path}: video cannot be opened (unsupported codec or not a video)")
    return cap


def _batches(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for k in range(0, len(items), n):
        yield items[k:k + n]


def predict_video(pred: Predictor, writer: Writer, path: Path, stem: str, progress: bool) -> int:
    """Overlay video <stem>.mp4 (same fps and frame count); returns the number of frames."""
    import cv2

    cap = _open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    out_path = writer.dir / f"{stem}.mp4"
    vw = None
    n = 0
    try:
        with tqdm(total=total or None, desc=path.name, leave=False, disable=not progress, file=sys.stdout) as bar:
            while True:
                frames = []
                while len(frames) < pred.batch_size:
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))  # the decoder's RGB rule
                if not frames:
                    break
                for rgb, (mask, _) in zip(frames, pred.masks(frames)):
                    _, over = writer.paint(rgb, writer.filter(mask))
                    if vw is None:
                        h, w = rgb.shape[:2]
                        out_path.parent.mkdir(parents=True, exist_ok=True)
                        vw = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        if not vw.isOpened():
                            raise UserError(f"{out_path}: OpenCV cannot write mp4v video here")
                    vw.write(np.ascontiguousarray(over[..., ::-1]))
                    n += 1
                bar.update(len(frames))
    finally:
        cap.release()
        if vw is not None:
            vw.release()
    if n == 0:
        raise UserError(f"{path}: video holds no readable frames")
    return n


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Segment images and videos with a trained model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (.pt) from train.py or .onnx from export.py")
    p.add_argument("--source", required=True, help="image, folder, glob ('imgs/*.jpg'), .txt list or video")
    p.add_argument("--data", default=None, help="dataset YAML: class names for an .onnx without them")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="H [W] (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8, help="images (or windows with --slide) per forward pass")
    p.add_argument("--project", default="runs/predict")
    p.add_argument("--name", default="exp")
    p.add_argument("--save-conf", action="store_true", help="also write conf/<stem>.png (max probability x 255)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    p.add_argument("--half", action="store_true", help="fp16 autocast on CUDA")
    add_inference_flags(p)
    add_common_flags(p)
    return p


def run(**kwargs: Any) -> dict[str, Any]:
    """Predict; returns a summary (save_dir, images, frames, failed [(path, reason)], seconds)."""
    args = build_parser().parse_args(["--weights", str(kwargs.pop("weights")), "--source", str(kwargs.pop("source"))])
    for k, v in kwargs.items():
        if not hasattr(args, k):
            raise TypeError(f"predict.run() got an unknown argument '{k}'")
        setattr(args, k, v)
    names, fallback = None, {}
    if args.data:  # stands in for what an .onnx exported elsewhere does not record
        from utils.dataconfig import load_data_config

        data = load_data_config(args.data)
        names, fallback = data.names, {"ignore_index": data.ignore_index, "palette": data.palette}
    # everything is checked before the run folder exists: a refused run leaves nothing behind
    sources = resolve_sources(str(args.source))
    pred = Predictor(args.weights, args.device, args.img_size, args.slide, args.overlap, args.slide_scale, args.tta,
                     args.tta_scales, not args.no_flip, args.batch_size, names, args.half, **fallback)
    if args.save_conf and getattr(pred.backend, "outputs_labels", False):
        raise UserError("--save-conf: this ONNX graph was exported with --argmax and returns class ids, not "
                        "probabilities; export without --argmax to save confidence maps")
    if args.classes is not None:
        bad = [c for c in args.classes if not 0 <= c < pred.nc]
        if bad:
            raise UserError(f"--classes {' '.join(map(str, bad))}: the model has classes 0..{pred.nc - 1}")
    for s in sources:
        if s.video and s.error is None:
            _open_video(s.path).release()  # an unreadable video is refused before anything is written
    save_dir = run_dir(args.project, args.name, args.exist_ok)
    writer = Writer(save_dir, pred, args.classes, args.save_conf)
    stems = unique_stems(sources)
    failed: list[tuple[str, str]] = [(str(s.path), s.error) for s in sources if s.error]
    images = [(s, stem) for s, stem in zip(sources, stems) if not s.error and not s.video]
    videos = [(s, stem) for s, stem in zip(sources, stems) if not s.error and s.video]
    progress = not getattr(args, "quiet", False)
    t0 = time.perf_counter()
    n_img = n_frames = 0
    with tqdm(total=len(images), desc="predict", disable=not progress or not images, file=sys.stdout) as bar:
        for chunk in _batches(images, args.batch_size if not pred.cfg.slide else 1):
            decoded = []
            for s, stem in chunk:
                try:
                    decoded.append((stem, read_image(s.path)))
                except UserError as e:  # corrupt or unreadable: listed, skipped, the run goes on
                    failed.append((str(s.path), str(e).removeprefix(f"{s.path}: ")))
            if decoded:
                results = pred.masks([im for _, im in decoded], with_conf=args.save_conf)
                for (stem, rgb), (mask, conf) in zip(decoded, results):
                    writer.image(stem, rgb, mask, conf)
                n_img += len(decoded)
            bar.update(len(chunk))
    for s, stem in videos:
        try:
            n_frames += predict_video(pred, writer, s.path, stem, progress)
        except UserError as e:
            failed.append((str(s.path), str(e).removeprefix(f"{s.path}: ")))
    dt = time.perf_counter() - t0
    for path, reason in failed:
        print(f"skipped {path}: {reason}")
    done = n_img + n_frames
    print(f"{n_img} images, {n_frames} video frames in {dt:.1f} s ({done / max(dt, 1e-9):.1f} images/s) "
          f"at {pred.cfg.describe() if pred.cfg.slide else f'{pred.img_size[0]}x{pred.img_size[1]}'}"
          f"{'; ' + pred.cfg.describe() if pred.cfg.tta and not pred.cfg.slide else ''} on {pred.device}"
          f"{f'; {len(failed)} failed' if failed else ''}")
    print(f"Results saved to {save_dir}")
    return {"save_dir": str(save_dir), "images": n_img, "frames": n_frames, "failed": failed, "seconds": dt}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; exits 1 when any source failed (the others are written)."""

    def _main(a: list[str] | None) -> dict[str, Any]:
        args = build_parser().parse_args(a)
        setup_runtime()
        out = run(**vars(args))
        if out["failed"]:
            raise UserError(f"{len(out['failed'])} of the sources could not be read (listed above)", exit_code=1)
        return out

    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
