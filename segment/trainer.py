"""The training engine: one loop for every model, dataset and recipe.

Reads top to bottom: setup (data check, model, data, optimiser, resume), the epoch loop (train,
validate, log, checkpoint), and the end of a run (plots on best.pt). Checkpoints hold everything an
exact resume needs; the data order and augmentation are functions of (seed, epoch, index), so a
resumed run repeats exactly the batches of an uninterrupted one.

Under torchrun every rank runs this same code. Whatever ends or skips a step (a signal, a non-finite
loss, the --time budget, early stopping, a NaN abort) is agreed on by all ranks in one small
all-reduce per step, so no rank is ever left waiting in a collective the others have left. Only rank 0
writes files.
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from models.model import build_model, describe, model_config
from models.yolo_pretrained import load_classification_weights, looks_like_module_pickle, read_classification_checkpoint
from segment.checkpoints import (CheckpointState, build_checkpoint, check_same_dataset, dataset_identity,
                                 find_resume_checkpoint, resume_args)
from segment.common import load_model, parse_crop, parse_img_size, parse_kv, preprocess
from segment.config import parse_class_weights, record_model_choices, validate_args
from segment.evaluate import EvalResult, eval_loader, evaluate
from segment.runlog import RunLogger, optional_output
from utils.augment import AugmentConfig, train_transform
from utils.checkpoint import (all_finite, load_checkpoint, load_matching, save_checkpoint, set_rng_state, state_dict_of,
                              torchvision_keys)
from utils.dataconfig import load_data_config
from utils.dataset_check import preflight
from utils.datasets import SegDataset, build_loader, cache_plan, class_weights_from_counts, decoded_bytes
from utils.errors import UserError
from utils.files import check_run_name, run_dir
from utils import distributed as ddp
from utils.losses import SegLoss
from utils.schedule import ProgressFactor, TimeBudget, lr_lambda
from utils.torch_utils import ModelEMA, autocast_dtype, count_params, gflops, seed_everything, select_device, unwrap


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: the run stopped after a finished step and saved a resumable last.pt."""

    prefix = ""  # a requested stop, not an error: printed as is


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on biases and normalisation parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), foreach=True)
    raise UserError(f"--optimizer {name}: use sgd or adamw")


class Trainer:
    """Set up from resolved arguments (see segment/train.py for every flag), then ``train()``."""

    def __init__(self, args: argparse.Namespace, explicit: set[str] | None = None,
                 start_time: float | None = None) -> None:
        self.args = args
        # the --time budget counts the whole command, from the entry point on (data check included)
        self.start_time = time.time() if start_time is None else start_time
        self.rank, self.local_rank, self.world_size = ddp.env_world()
        self.main = self.rank == 0
        self.stop_signal: int | None = None
        self._validated_this_session = False  # --val-period: the first epoch end of every session validates
        self.resume_ckpt: dict[str, Any] | None = None
        validate_args(args, resuming=bool(args.resume), explicit=explicit)  # the whole configuration, before anything is read or built
        if args.resume:
            name = args.name if "name" in (explicit or set()) else None  # --resume --name exp: that run
            path = find_resume_checkpoint(args.resume, args.project, name)
            self.resume_ckpt = load_checkpoint(path)
            self.args = args = resume_args(self.resume_ckpt, path, args, explicit or set())
            validate_args(args, resuming=True)
        self.setup()

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        a = self.args
        ids = [d for d in str(a.device).replace("cuda:", "").split(",") if d.strip()]
        if self.world_size == 1 and len(ids) > 1:
            raise UserError(f"--device {a.device}: several GPUs train with one process each; launch with "
                            f"torchrun --nproc-per-node {len(ids)} segment/train.py ... --device {a.device}")
        self.device = select_device(a.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world_size > 1:
            ddp.init(self.device, a.dist_timeout)
        # the same seed on every rank: identical initial weights; per-rank streams start at each epoch
        seed_everything(a.seed, a.deterministic)
        if self.resume_ckpt is None:
            check_run_name(a.project, a.name)  # refuse a bad --name before the (possibly long) data check
        # --weights is read (safely) before anything is written: a refused file leaves no run folder
        self.init_state = self._read_initial_weights()
        # Rank 0 prepares the data first (it may generate shapes and writes the check's cache); the
        # other ranks then find both ready instead of racing to write them.
        if not self.main:
            ddp.barrier()
        self.data = load_data_config(a.data)
        # The dataset check runs before anything is written: a bad dataset leaves no run folder behind.
        reports = preflight(self.data, ["train", "val"], skip_bad=a.skip_bad, workers=max(a.workers, 1), log=self.log,
                            require_objects=True)
        if self.main:
            ddp.barrier()
        self.data_identity = {s: dataset_identity(r.items, self.data.root) for s, r in reports.items()}
        if self.resume_ckpt is not None:
            check_same_dataset(self.resume_ckpt, self.data_identity, a.resume)
        self.img_size = parse_img_size(a.img_size)
        a.img_size = list(self.img_size)
        # what validation, best.pt and the checkpoint's inference default use (None: the training size)
        self.val_size = parse_img_size(a.val_size, "--val-size") if a.val_size else self.img_size
        a.val_size = list(self.val_size) if a.val_size else None
        # the model (and the weights it starts from) is built before the run folder: a bad head option or
        # a checkpoint that does not fit is refused with nothing written
        self.model_cfg = model_config(self.data.nc, a.backbone, a.head, a.cfg, a.scale, aux=a.aux_weight > 0,
                                      head_args=parse_kv(a.head_args))
        if self.resume_ckpt is not None:
            self.model_cfg = self.resume_ckpt["model_cfg"]
        else:
            record_model_choices(a, self.model_cfg)
        self.model = build_model(self.model_cfg).to(self.device, memory_format=torch.channels_last)
        self._load_initial_weights()
        self.log(f"Model {describe(self.model_cfg)}: {count_params(self.model) / 1e6:.2f} M parameters, "
                 f"{gflops(self.model, self.img_size):.2f} GFLOPs at {self.img_size[0]}x{self.img_size[1]}")

        crop = parse_crop(a.crop, self.img_size)
        a.crop = list(crop) if crop is not None else None
        if self.val_size != self.img_size:
            self.log(f"Validation and best.pt at {self.val_size[0]}x{self.val_size[1]} (--val-size), training images "
                     f"resized to {self.img_size[0]}x{self.img_size[1]}")
        aug = AugmentConfig(a.scale_range[0], a.scale_range[1], a.fliplr, a.color_jitter, crop)
        spec = self.data.mask_spec
        cache_train, cache_val, note = cache_plan(a.cache, decoded_bytes(reports["train"], spec),
                                                  decoded_bytes(reports["val"], spec))
        if note:
            self.log(note)
        self.train_ds = SegDataset(reports["train"].items, spec, train_transform(self.img_size, self.data.ignore_index, aug),
                                   train=True, cache="ram" if cache_train else None)
        self.train_loader = build_loader(self.train_ds, a.batch_size, a.workers, shuffle=True, seed=a.seed,
                                         rank=self.rank, world_size=self.world_size, pin_memory=self.device.type == "cuda")
        if len(self.train_loader) == 0:
            raise UserError(f"--batch-size {a.batch_size} is larger than this rank's {len(self.train_loader.sampler)} training images")
        self.val_loader = eval_loader(self.data, "val", self.val_size, a.batch_size, a.workers, a.skip_bad,
                                      cache="ram" if cache_val else None, log=lambda *_: None, rank=self.rank,
                                      world_size=self.world_size)
        cached = self.train_ds.cache_bytes() + self.val_loader.dataset.cache_bytes()
        if cached:
            self.log(f"Cached {len(self.train_ds) if cache_train else 0} training and "
                     f"{len(self.val_loader.dataset) if cache_val else 0} val images in RAM ({cached / 2**20:.0f} MiB, "
                     f"--cache {a.cache})")

        cw = self._class_weights(reports["train"].class_pixels)
        self.loss_fn = SegLoss(a.loss, self.data.ignore_index, cw, a.aux_weight, self.model.output_weights).to(self.device)
        # lr0 and weight_decay are already resolved (config.resolve_defaults): one place owns their defaults
        self.optimizer = build_optimizer(self.model, a.optimizer, a.lr0, a.momentum, a.weight_decay)
        ipe = len(self.train_loader)
        if a.time:
            # progress is the share of the time budget used; warm-up takes warmup_epochs/epochs of it
            self.lr_progress: ProgressFactor | None = ProgressFactor(min(a.warmup_epochs / a.epochs, 1.0), a.lrf, a.cos_lr)
            factor: Callable[[int], float] = self.lr_progress
        else:
            self.lr_progress = None
            factor = lr_lambda(a.epochs * ipe, round(a.warmup_epochs * ipe), a.lrf, a.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        # A resumed run keeps the recorded choice; a checkpoint from before --precision existed says only
        # amp on/off, which meant bf16 wherever native: that rule again (no probe), so the resume is exact.
        probe = None if self.resume_ckpt is not None else self._precision_probe
        self.amp_dtype, amp_msg = autocast_dtype(self.device, a.precision, probe)
        dtypes, names = (None, torch.bfloat16, torch.float16), ("fp32", "bf16", "fp16")
        choice = int(ddp.from_rank0(float(dtypes.index(self.amp_dtype)), self.device))
        self.amp_dtype = dtypes[choice]
        self.log(amp_msg)  # rank 0's line, and rank 0's choice for every rank
        self.amp = self.amp_dtype is not None
        # validation's autocast is fp16 on CUDA (and none on CPU): only for a model trained in fp16
        self.val_amp = self.amp_dtype is torch.float16
        # the choice is recorded (args.yaml, checkpoints): a resumed run keeps it instead of measuring again
        a.precision = names[choice]
        # bf16 has fp32's exponent range: only fp16 needs loss scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(self.model, decay=a.ema_decay, tau=a.ema_tau) if a.ema else None
        self.state = CheckpointState()
        # The run folder comes last: every refusal above (model, weights, loss, data) leaves nothing behind.
        if self.resume_ckpt is not None:
            self.save_dir = Path(a.save_dir)
        else:
            # rank 0 picks (and makes) the folder; exp2, exp3 ... must not be decided twice
            name = str(run_dir(a.project, a.name, a.exist_ok, mkdir=True)) if self.main else None
            self.save_dir = Path(ddp.gather(name)[0])
            a.save_dir = str(self.save_dir)
        self.wdir = self.save_dir / "weights"
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self._elapsed_before = self.state.elapsed
        self.budget = TimeBudget(a.time, self.start_time, self.state.elapsed) if a.time else None
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            if self.device.type == "cuda" and a.sync_bn:  # CPU (gloo) has no SyncBatchNorm
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # An epoch's checkpoint is written before its logs, so resuming from an epoch-end last.pt re-logs that
        # epoch (a kill may have come between the two); its TensorBoard events are purged and its scalars
        # written again (image grids are not kept). A mid-epoch last.pt comes after the last epoch's logs.
        st = self.state
        # (checkpoints from before this order existed were written after the logs and hold no class_iou;
        # an unscored epoch's checkpoint (--val-period) holds an empty one)
        ckpt_metrics = (self.resume_ckpt or {}).get("metrics") or {}
        relog = (self.resume_ckpt is not None and st.next_step == 0 and bool(st.rows) and "class_iou" in ckpt_metrics)
        purge = None if self.resume_ckpt is None else st.next_epoch + (0 if relog else 1)
        self.logger = RunLogger(self.save_dir, self.data, enabled=self.main, purge_step=purge)
        if self.main:
            self.logger.write_args(vars(a))
            if relog:
                optional_output("TensorBoard/results.csv", lambda: self.logger.relog(
                    st.rows, ckpt_metrics.get("class_iou", {})), self.log)

    def _precision_probe(self) -> tuple[float, float]:
        """(fp32, bf16) ms of one training step of this run's model, batch and input size (no collective:
        a rank that measures decides only for itself, and the caller takes rank 0's decision)."""
        from segment.precision import probe_step_ms

        a = self.args
        return probe_step_ms(unwrap(self.model), self.loss_fn, a.batch_size, tuple(a.crop or a.img_size), self.data.nc)

    def _read_initial_weights(self) -> dict[str, torch.Tensor] | None:
        w = self.args.weights
        if self.resume_ckpt is not None or w in (None, "", "none", "pretrained"):
            return None
        if looks_like_module_pickle(w):  # a reference YOLO -cls.pt: read without running code
            self.init_cls = read_classification_checkpoint(w)
            return None
        try:
            return state_dict_of(load_checkpoint(w))
        except UserError as e:
            raise UserError(f"--weights {w}: {e}") from None

    def _load_initial_weights(self) -> None:
        w = self.args.weights
        if self.resume_ckpt is not None or w in (None, "", "none"):
            return
        if w == "pretrained":
            if not hasattr(self.model.backbone, "load_pretrained"):
                raise UserError(f"--weights pretrained: no ImageNet weights for {describe(self.model_cfg)}; "
                                f"use --weights none or a .pt file")
            self.model.backbone.load_pretrained()
            self.log("Loaded ImageNet weights into the backbone")
            return
        if getattr(self, "init_cls", None) is not None:
            n, total, rows = load_classification_weights(self.model, self.init_cls, self.model_cfg)
            self.init_cls = None
            self.log(f"Loaded {n}/{total} backbone tensors from {w} (ImageNet classification checkpoint, "
                     f"matching row, name and shape):\n  " + "\n  ".join(rows))
            return
        state, how = self.init_state or {}, "matching name and shape"
        matched, total = load_matching(self.model, state)
        if matched == 0:  # a plain torchvision state dict (resnet18-xxxx.pth): map its names to the backbone's
            mapped = torchvision_keys(self.model, state)
            if mapped:
                matched, total = load_matching(self.model, mapped)
                how = "torchvision names mapped to the backbone"
        self.init_state = None  # only needed once
        if matched == 0:
            sample = ", ".join(list(state)[:3])
            raise UserError(f"--weights {w}: no tensor matches {describe(self.model_cfg)} by name and shape "
                            f"(the file has {len(state)} tensors, e.g. {sample}); give weights of the same model, "
                            f"--weights pretrained for ImageNet weights, or --weights none")
        self.log(f"Transferred {matched}/{total} tensors from {w} ({how})")

    def _class_weights(self, counts: list[int]) -> list[float] | None:
        cw = self.args.class_weights
        if cw in (None, "", "none"):
            return None
        if cw == "auto":
            w = class_weights_from_counts(counts)
            self.log("Class weights (auto): " + ", ".join(f"{n} {v:.2f}" for n, v in zip(self.data.names, w)))
            return w
        return parse_class_weights(cw, self.data.nc)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        t = ckpt["train"]
        self.model.load_state_dict(t["model"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(t["ema"])
        self.optimizer.load_state_dict(t["optimizer"])
        self.scheduler.load_state_dict(t["scheduler"])
        self.scaler.load_state_dict(t["scaler"])
        self.state = CheckpointState.from_dict(t["state"])
        if isinstance(self.state.rng, list):  # a DDP run stopped mid-epoch keeps every rank's RNG
            self.state.rng = self.state.rng[self.rank] if self.rank < len(self.state.rng) else {}
        self.log(f"Resuming {self.save_dir} at epoch {self.state.next_epoch + 1}"
                 + (f", step {self.state.next_step}" if self.state.next_step else ""))

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Train to the last epoch (or early stop / signal); returns a summary dict."""
        a, st = self.args, self.state
        # every rank catches the stop signals (torchrun forwards them); the step's all-reduce shares them
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        t_start = time.time()
        try:
            # a run that already stopped (early stop, budget spent) and was killed in its wrap-up only finishes
            done = st.stopped_early or st.time_up
            for epoch in range(st.next_epoch, st.next_epoch if done else a.epochs):
                self._train_epoch(epoch)
                self._end_epoch(epoch)
                if st.stopped_early or st.time_up:
                    break
                signalled = ddp.agree([float(self.stop_signal is not None)], self.device)[0]
                if signalled and epoch + 1 < a.epochs:  # arrived during validation/saving
                    self._interrupt(epoch + 1, 0)
        except BaseException:
            ddp.shutdown()
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self.logger.close()
        summary = self._finish(time.time() - t_start)
        ddp.shutdown()
        return summary

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # a second signal: stop now, last.pt stays as it was
            raise KeyboardInterrupt
        self.stop_signal = signum

    def _train_epoch(self, epoch: int) -> None:
        a, st = self.args, self.state
        model, loader = self.model, self.train_loader
        resuming_mid_epoch = st.next_step > 0 and epoch == st.next_epoch
        start = st.next_step if resuming_mid_epoch else 0
        loader.sampler.set_epoch(epoch, start * a.batch_size)
        if resuming_mid_epoch:
            set_rng_state(st.rng)
        else:
            # Dropout & co. draw from the global RNG; reseeding per epoch makes an epoch's draws
            # independent of whatever ran before it (validation, plotting, a resume).
            torch.manual_seed(a.seed + self.rank + 1_000_003 * (epoch + 1))
            st.sums, st.nonfinite_epoch = {}, 0
            st.speed = {"images": 0.0, "wait": 0.0, "seconds": 0.0}
        model.train()
        pbar = tqdm(enumerate(loader, start), total=start + len(loader), desc=f"{epoch + 1}/{a.epochs}",
                    disable=not self.main, file=sys.stdout, leave=True)
        t_prev = time.perf_counter()
        for step, (images, masks, _) in pbar:
            t_data = time.perf_counter()
            x, y = preprocess(images, self.device), masks.to(self.device, non_blocking=True)
            # BatchNorm updates its running stats in the forward pass; a skipped step must undo that too
            buffers = [b.detach().clone() for b in model.buffers()]
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                outputs = model(x)
            loss, parts = self.loss_fn(outputs, y)
            # One all-reduce per step decides for all ranks: skip (a non-finite loss anywhere), stop
            # (a signal anywhere), and the schedule's progress (rank 0's clock, so every rank sets the same LR).
            progress = 0.0
            if self.budget is not None and self.main:
                # the epoch's last step also counts the validation that follows it (TimeBudget's doc)
                last = step == start + len(loader) - 1 and epoch + 1 < a.epochs
                progress = self.budget.progress(self.budget.end_cost(self._validates(epoch)) if last else 0.0)
            nonfinite, signalled, progress = ddp.agree(
                [float(not torch.isfinite(loss)), float(self.stop_signal is not None), progress], self.device)
            # a step skipped on one rank is skipped on all (no rank may enter the gradient all-reduce alone)
            if not nonfinite and self._step(loss):
                st.consecutive_nonfinite = 0
                for k, v in {"loss": loss, **parts}.items():
                    st.sums[k] = st.sums.get(k, 0.0) + float(v.detach())
                st.sums["n"] = st.sums.get("n", 0.0) + 1
            else:
                with torch.no_grad():
                    for b, saved in zip(model.buffers(), buffers):
                        b.copy_(saved)
                st.nonfinite_steps += 1
                st.nonfinite_epoch += 1
                st.consecutive_nonfinite += 1
                self.log(f"\nnon-finite loss/gradient at epoch {epoch + 1} step {step + 1}: step skipped "
                         f"({st.consecutive_nonfinite} in a row)")
                if st.consecutive_nonfinite >= a.nan_patience:
                    raise UserError(f"training stopped: {st.consecutive_nonfinite} consecutive steps with a "
                                    f"non-finite loss or gradient (epoch {epoch + 1}, step {step + 1}; "
                                    f"--nan-patience {a.nan_patience}). Lower --lr0, check the data, or try "
                                    f"--loss ce. {self._last_good()}")
            if self.lr_progress is not None:
                self.lr_progress.progress = progress
            self.scheduler.step()
            t_now = time.perf_counter()
            sp = st.speed
            sp["images"] += len(images)
            sp["wait"] += t_data - t_prev
            sp["seconds"] += t_now - t_prev
            t_prev = t_now
            n = max(st.sums.get("n", 0.0), 1.0)
            pbar.set_postfix(loss=f"{st.sums.get('loss', float('nan')) / n:.4f}",
                             lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                             img_s=f"{sp['images'] / max(sp['seconds'], 1e-9):.1f}",
                             data=f"{100 * sp['wait'] / max(sp['seconds'], 1e-9):.0f}%")
            # alone, a signal that came during this step stops right after it; under DDP the ranks learn
            # of it in the next step's all-reduce
            if signalled or (self.world_size == 1 and self.stop_signal is not None):
                pbar.close()
                self._interrupt(epoch, step + 1)
            if progress >= 1.0:  # the budget is spent: this partial epoch is validated and the run ends
                pbar.close()
                st.time_up = True
                self.log(f"Time budget of {a.time:g} h reached at epoch {epoch + 1} step {step + 1}")
                return

    def _step(self, loss: torch.Tensor) -> bool:
        """Backward + optimiser step; False (and no update) when the loss or the gradients are not finite."""
        opt = self.optimizer
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            return False
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        # the norm is needed for the finiteness check even when clipping is off (--grad-clip 0)
        max_norm = self.args.grad_clip if self.args.grad_clip > 0 else float("inf")
        gnorm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # all-reduced gradients: every rank sees the same norm and takes the same decision
        if not torch.isfinite(gnorm) and not self.scaler.is_enabled():  # the fp16 scaler skips by itself
            opt.zero_grad(set_to_none=True)
            return False
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return True

    def _eval_model(self) -> nn.Module:
        return self.ema.ema if self.ema is not None else unwrap(self.model)

    def _validates(self, epoch: int) -> bool:
        """Whether ``epoch`` ends with a validation: every --val-period-th epoch, and always the first one
        of each session (an early check of the whole pipeline, and the cost the time budget reserves: a
        resumed session starts without that measurement), the last and the one a time budget ends
        (best.pt is chosen among validated epochs only, so the final weights are scored)."""
        a = self.args  # a checkpoint from before the flag resumes with its default, 1 (resume_args)
        return (a.val_period <= 1 or not self._validated_this_session or epoch + 1 >= a.epochs
                or (epoch + 1) % a.val_period == 0 or self.state.time_up)

    def _end_epoch(self, epoch: int) -> None:
        a, st = self.args, self.state
        t0 = time.perf_counter()
        validate = self._validates(epoch)
        if not validate and self.budget is not None:
            # a budget that runs out between epochs (the check below) must end on a validated epoch
            validate = bool(ddp.agree([float(self.budget.only_wrap_up_fits(0.0))], self.device)[0])
        res: EvalResult | None = None
        if validate:
            self._validated_this_session = True
            ddp.broadcast_module(self._eval_model())  # every rank scores rank 0's weights, the ones saved
            res = evaluate(self._eval_model(), self.val_loader, self.data, self.device, self.loss_fn, self.val_amp,
                           keep_examples=a.tb_images if self.main else 0, progress=self.main)
        sums = ddp.sum_dict(st.sums, self.device)  # the losses of every rank's shard
        speed = ddp.sum_dict(st.speed, self.device)
        n = max(sums.get("n", 0.0), 1.0)
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"train/{k}": v / n for k, v in sums.items() if k != "n"})
        row["train/skipped_steps"] = st.nonfinite_epoch
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        # images/s of the whole job (ranks run side by side); data wait as a share of step time
        secs = speed["seconds"] / self.world_size
        row["train/img_per_s"] = speed["images"] / secs if secs > 0 else float("nan")
        row["train/data_wait"] = speed["wait"] / speed["seconds"] if speed["seconds"] > 0 else float("nan")
        improved = keep = False
        if res is not None:
            row.update({"val/loss": res.loss, "val/mIoU": res.metrics["mIoU"], "val/pixel_acc": res.metrics["pixel_acc"],
                        "val/mean_acc": res.metrics["mean_acc"], "val/mDice": res.metrics["mDice"]})
            fitness = res.metrics["mIoU"]
            improved = math.isfinite(fitness) and fitness > st.best_fitness  # NaN is never best
            if improved:
                st.best_fitness, st.best_epoch = fitness, epoch + 1
            # --best final: every scored, finite epoch replaces best.pt, so it ends as the final weights
            keep = improved or (a.best == "final" and math.isfinite(fitness))
        st.rows.append(row)
        st.next_epoch, st.next_step, st.rng = epoch + 1, 0, {}  # an epoch start reseeds: no RNG state to keep
        # judged at validated epochs only: an unscored epoch says nothing about improvement
        patience_hit = res is not None and a.patience > 0 and epoch + 1 - st.best_epoch >= a.patience
        st.stopped_early = patience_hit and epoch + 1 < a.epochs
        # an unscored epoch end was judged before (it would have validated had the wrap-up not fitted):
        # judging again here could end the run on an unscored epoch
        if self.budget is not None and not st.time_up and epoch + 1 < a.epochs and res is not None:
            # decided before saving, so a kill during the wrap-up resumes into the wrap-up only; the
            # normal stop was at a step: this catches only a validation far slower than the last one
            hard = self.budget.only_wrap_up_fits(time.perf_counter() - t0)
            st.time_up = bool(ddp.agree([float(hard)], self.device)[0])
            if st.time_up:
                self.log(f"Time budget of {a.time:g} h reached after epoch {epoch + 1}")
        if self.main:
            self._save(epoch, best=keep, metrics=res.metrics if res else None)  # first: the epoch is safe
            # optional outputs: a failure is a warning, never the loss of the epoch just trained
            # (the image grids come with validations only: they show the eval model next to its scores)
            optional_output("TensorBoard/results.csv", lambda: self.logger.log_epoch(
                st.rows, res, self._train_grid_batch(epoch) if res is not None else None), self.log)
            val = f"val mIoU {res.metrics['mIoU']:.4f}" if res is not None else "not validated"
            self.log(f"epoch {epoch + 1}/{a.epochs}: loss {row.get('train/loss', float('nan')):.4f}  "
                     f"{val}  best {st.best_fitness:.4f} (epoch {st.best_epoch})  "
                     f"{row['train/img_per_s']:.1f} img/s, data wait {100 * row['train/data_wait']:.0f}%")
        if self.budget is not None:
            self.budget.note_epoch_end(time.perf_counter() - t0, validated=res is not None)
        if st.stopped_early:
            self.log(f"Early stop: no val mIoU improvement for {a.patience} epochs (best {st.best_fitness:.4f} "
                     f"at epoch {st.best_epoch})")

    def _train_grid_batch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """A fixed train batch (first images, this epoch's augmentation) with the eval model's predictions."""
        from utils.datasets import i_seed

        if self.args.tb_images <= 0:  # --tb-images 0: no image grids
            return None
        items = [self.train_ds[(i, i_seed(i, self.args.seed, epoch))] for i in range(min(self.args.tb_images, len(self.train_ds)))]
        images = torch.stack([it[0] for it in items])
        masks = torch.stack([it[1] for it in items])
        model = self._eval_model()
        was = model.training
        model.eval()
        with torch.no_grad():
            preds = model(preprocess(images, self.device)).argmax(1).cpu()
        model.train(was)
        return images, masks, preds

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        raw = unwrap(self.model).state_dict()
        infer = self.ema.ema.state_dict() if self.ema is not None else raw
        if not (all_finite(raw) and all_finite(infer)):
            raise UserError(f"weights became non-finite at epoch {epoch + 1}; they were not saved. "
                            f"Lower --lr0 or --grad-clip. {self._last_good()}")
        self.state.elapsed = self._elapsed()
        train = {"model": raw, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None}
        return build_checkpoint(self.data, self.args, self.model_cfg, self.val_size, self.data_identity, infer,
                                train, self.state, epoch, metrics)

    def _elapsed(self) -> float:
        """Seconds this run has used so far, over all its sessions (what --time counts)."""
        if self.budget is not None:
            return self.budget.used()
        return self._elapsed_before + time.time() - self.start_time

    def _last_good(self) -> str:
        """Where to go on from after a non-finite stop (a plain --resume would repeat the same steps)."""
        last = self.wdir / "last.pt"
        if not last.is_file():
            return "No checkpoint was written yet."
        return f"The last good checkpoint is {last}: start a new run from it with --weights {last} and a lower --lr0."

    def _save(self, epoch: int, best: bool, metrics: dict[str, Any] | None) -> None:
        paths = []
        if self.args.save_period > 0 and (epoch + 1) % self.args.save_period == 0:
            paths.append(self.wdir / f"epoch{epoch + 1}.pt")
        if best:
            paths.append(self.wdir / "best.pt")
        # last.pt is written last: it commits the epoch. A kill before it redoes the epoch on --resume,
        # which rewrites the files above with identical contents (best.pt is never left behind its state).
        save_checkpoint(self._checkpoint(epoch, metrics), *paths, self.wdir / "last.pt")

    def _interrupt(self, epoch: int, next_step: int) -> None:
        """Save a resumable last.pt (mid-epoch: with the RNG state) and stop with a clear message."""
        from utils.checkpoint import rng_state

        st = self.state
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "signal"
        if next_step > 0:  # at an epoch boundary the epoch-end last.pt is already the right one
            st.next_epoch, st.next_step = epoch, next_step
            # one RNG state per rank; the shards' running sums are stored as their mean, so that the
            # W ranks of the resumed run add back up to the whole job's sums at the epoch end
            rngs = ddp.gather(rng_state())
            st.rng = rngs if self.world_size > 1 else rngs[0]
            st.sums = {k: v / self.world_size for k, v in ddp.sum_dict(st.sums, self.device).items()}
            st.speed = {k: v / self.world_size for k, v in ddp.sum_dict(st.speed, self.device).items()}
            if self.main:
                save_checkpoint(self._checkpoint(epoch, None), self.wdir / "last.pt")
        if self.main:
            self.logger.close()
        where = f"at epoch {epoch + 1} step {next_step}" if next_step else f"after epoch {epoch}"
        raise TrainingInterrupted(
            f"{name}: stopped {where}; saved {self.wdir / 'last.pt'}. "
            f"Resume with: python segment/train.py --resume {self.wdir / 'last.pt'}",
            exit_code=128 + (self.stop_signal or 2))

    # ------------------------------------------------------------------ end of run
    def _finish(self, seconds: float) -> dict[str, Any]:
        st = self.state
        summary = {"save_dir": str(self.save_dir), "best_fitness": st.best_fitness, "best_epoch": st.best_epoch,
                   "epochs_run": st.next_epoch, "hours": seconds / 3600, "time_up": st.time_up}
        best = self.wdir / "best.pt"
        # Every rank takes part in the final validation (its metrics are all-reduced). Rank 0 reads
        # best.pt, exactly what val.py will load, and hands the weights to the others: no rank but 0
        # needs to see the run folder (nodes need not share a file system).
        if ddp.agree([float(self.main and best.is_file())], self.device)[0]:
            if self.main:
                model, _ = load_model(best, self.device)
            else:
                model = build_model(self.model_cfg).to(self.device, memory_format=torch.channels_last).eval()
            ddp.broadcast_module(model)
            res: EvalResult = evaluate(model, self.val_loader, self.data, self.device, amp=self.val_amp,
                                       keep_examples=8 if self.main else 0, desc="best.pt val", progress=self.main)
            optional_output("final plots", lambda: self.logger.final_plots(st.rows, res), self.log)
            summary["best_metrics"] = res.metrics
        if not self.main:
            return summary
        # marked only now, so a run killed during the wrap-up resumes into it and still gets its plots
        last = load_checkpoint(self.wdir / "last.pt")
        last["finished"] = True
        save_checkpoint(last, self.wdir / "last.pt")
        why = f" (time budget {self.args.time:g} h)" if st.time_up else ""
        self.log(f"{st.next_epoch} epochs in {seconds / 60:.1f} min{why}; best val mIoU {st.best_fitness:.4f} "
                 f"(epoch {st.best_epoch})")
        if self.args.best == "final" and "best_metrics" in summary:
            self.log(f"best.pt holds the final weights (--best final): val mIoU {summary['best_metrics']['mIoU']:.4f}")
        self.log(f"Results saved to {self.save_dir}\n  weights: {best}\n  validate: python segment/val.py "
                 f"--weights {best} --data {self.args.data}\n  TensorBoard: tensorboard --logdir {self.save_dir.parent}")
        return summary
