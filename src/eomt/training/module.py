"""The Lightning module: the paper's training recipe around an `EoMT` network.

- loss on every intermediate block prediction and the final one (`MaskClassificationLoss`);
- AdamW with the official layer-wise LR decay, two-stage warm-up and poly decay, stepped per
  optimizer step (`schedules`);
- mask annealing: the per-block masking probabilities are a pure function of the step, set
  before every training step and logged;
- validation with the official inference (resize+pad or sliding windows) and the task's
  evaluator; metrics are reduced across processes.

The network attribute is named `network`, so our Lightning checkpoints share the official key
layout (`network.*`) and carry the resolved config in `hyper_parameters`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import lightning.pytorch as pl
import torch
from torch import Tensor

from eomt.config import ExperimentConfig
from eomt.errors import EomtError
from eomt.models import EoMT, unwrap_compiled
from eomt.structures import Target
from eomt.training.data_module import global_batch_positions
from eomt.training.losses import MaskClassificationLoss
from eomt.training.points import image_generators
from eomt.training.schedules import llrd_param_groups, mask_annealing_probs, warmup_poly_lambdas

log = logging.getLogger(__name__)


class DivergenceError(EomtError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; the message names the step."""


class EoMTModule(pl.LightningModule):
    """Trains and validates an EoMT network as configured by an `ExperimentConfig`.

    config: the resolved experiment (a plain dict, as Lightning hands back its saved
        hyper-parameters, is parsed once here). total_steps: optimizer steps of the whole run
        (`TrainConfig.total_steps`), which the LR schedule and mask annealing are fractions of.
    """

    # Where the ViT's parameters are in `network` (its layer-wise LR decay groups); a network that
    # wraps an EoMT (VidEoMT) names its own.
    backbone_prefix = "backbone."

    def __init__(self, config: ExperimentConfig | Mapping[str, Any], network: EoMT | None = None,
                 total_steps: int = 1) -> None:
        super().__init__()
        self.cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
        plain = self.cfg.to_dict()
        # The resolved config (plain data) is saved in every checkpoint.
        self.save_hyperparameters({"config": plain, "model_config": plain["model"]})
        self.network = network if network is not None else EoMT(self.cfg.model)
        t = self.cfg.train
        self.network.gradient_checkpointing = t.activation_checkpointing
        if t.freeze_backbone:
            self.freeze_backbone()
        self.criterion = MaskClassificationLoss(
            num_classes=self.cfg.model.num_classes,
            num_points=t.num_points,
            oversample_ratio=t.oversample_ratio,
            importance_sample_ratio=t.importance_sample_ratio,
            mask_weight=t.mask_weight,
            dice_weight=t.dice_weight,
            class_weight=t.class_weight,
            no_object_weight=t.no_object_weight,
        )
        self.total_steps = total_steps
        self.evaluator: Any = None
        self.fused_optimizer: bool | None = None  # None: fused wherever it is allowed

    def freeze_backbone(self) -> None:
        """Freeze the ViT (patch embedding, position embedding, tokens, blocks, final norm): only the
        queries, the mask module and the heads train. The query blocks still run (frozen) on the
        queries, as in a linear probe of the paper's architecture."""
        for name, param in self.network.named_parameters():
            if name.startswith("backbone."):
                param.requires_grad_(False)

    # ------------------------------------------------------------------ schedules
    def annealing_probs(self, step: int) -> list[float]:
        t = self.cfg.train
        n = self.cfg.model.num_blocks
        if not t.mask_annealing:
            return [1.0] * n
        windows = list(t.anneal_windows) or None
        return mask_annealing_probs(step, self.total_steps, n, windows, power=t.poly_power)

    def configure_optimizers(self) -> Any:
        t, m = self.cfg.train, self.cfg.model
        world = self.trainer.world_size if self._trainer is not None else 1
        total_batch = self.cfg.data.batch_size * world
        lr = t.scaled_lr(total_batch)
        if t.lr_scaling != "none" and not getattr(self, "_lr_reported", False):
            self._lr_reported = True  # configure_optimizers runs again when a resume re-applies values
            log.info("train.lr %.3g at batch %d -> %.3g at the total batch %d (%s scaling)",
                     t.lr, t.lr_reference_batch, lr, total_batch, t.lr_scaling)
        groups = llrd_param_groups(
            self.network,
            lr,
            depth=m.depth,
            num_blocks_l2=m.num_blocks,
            llrd=t.llrd,
            weight_decay=t.weight_decay,
            llrd_l2_enabled=t.llrd_l2_enabled,
            backbone_prefix=self.backbone_prefix,
        )
        for g in groups:
            g.pop("names", None)
        fused = self.fused_optimizer if self.fused_optimizer is not None else self._fused_allowed()
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=t.weight_decay, fused=fused)
        lambdas = warmup_poly_lambdas(groups, self.total_steps, t.warmup(self.total_steps), t.poly_power)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def log_training_loss(self, total: Tensor, losses: dict[str, Tensor], batch_size: int) -> None:
        """Stop on a non-finite loss (`DivergenceError`), else log the total and each term."""
        if not torch.isfinite(total):
            raise DivergenceError(self._diverged("train/loss", total))
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        for key, value in losses.items():
            self.log(f"losses/train_{key}", value, on_step=True, on_epoch=False, batch_size=batch_size)

    def _fused_allowed(self) -> bool:
        """Fused AdamW (one kernel over all parameters) on CUDA and CPU, except under a GradScaler
        (16-mixed on CUDA) with clipping: the fused step unscales the gradients itself, after the
        clipping would have had to see them unscaled."""
        scaler = self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None
        return self.device.type in ("cuda", "cpu") and not (scaler and self.cfg.train.grad_clip > 0)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm (the recipe's 0.01) and stop on a non-finite gradient.

        Runs after the gradients are unscaled (Lightning unscales before this hook whenever a
        GradScaler runs and the optimizer is not fused), so every precision clips true gradients.
        """
        t = self.cfg.train
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        if t.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip, foreach=True)
        else:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None and not torch.isfinite(norm):
            # With a GradScaler an overflow only skips the step; without one it would poison the weights.
            raise DivergenceError(self._diverged("gradient norm", norm))

    def _diverged(self, what: str, value: Tensor) -> str:
        from pathlib import Path

        ckpt = Path(self.cfg.train.out_dir) / "checkpoints" / "last.ckpt"
        kept = f"the last finite checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint had been written yet"
        return (
            f"{what} is {float(value)} at step {self.global_step}: training diverged (train.lr="
            f"{self.cfg.train.lr:g}). Nothing was written after this step; {kept}. Lower train.lr or check the data"
        )

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        probs = self.annealing_probs(self.global_step)
        self.network.set_attn_mask_probs(probs)
        for i, p in enumerate(probs):
            self.log(f"anneal/attn_mask_prob_{i}", p, on_step=True, on_epoch=False)

    def training_step(self, batch: tuple[Tensor, list[Target]], batch_idx: int) -> Tensor:
        images, targets = batch
        # Every random draw of the step (masked-attention lifting, then the loss's points) comes
        # from one generator per image, seeded by (seed, step, place in the global batch), so it is
        # the same on any number of processes and after a resume.
        world = self.trainer.world_size if self._trainer is not None else 1
        positions = global_batch_positions(images.shape[0], self.global_rank, world)
        generators = image_generators(self.cfg.train.seed, self.global_step, positions, self.device)
        noise = None
        if self.network.masked_attention_active:
            shape = (self.cfg.model.num_blocks, self.cfg.model.num_queries)
            noise = torch.stack([torch.rand(shape, generator=g, device=self.device) for g in generators])  # (B, L2, K)
        out = self.network(images, lift_noise=noise)
        masks = [*out.mask_logits_per_block, out.mask_logits]
        classes = [*out.class_logits_per_block, out.class_logits]
        targets = [
            Target(*(v.to(self.device, non_blocking=True) for v in (t.masks, t.labels, t.is_crowd)))
            for t in targets
        ]
        total, losses = self.criterion.forward_blocks(masks, classes, targets, generator=generators)
        self.log_training_loss(total, losses, images.shape[0])
        opt = self.optimizers()
        if not isinstance(opt, list):
            for i, group in enumerate(opt.param_groups[:1] + opt.param_groups[-1:]):
                name = "backbone" if group.get("is_backbone") else "head"
                self.log(f"lr/{name}", group["lr"], on_step=True, on_epoch=False, batch_size=images.shape[0])
        return total

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A diverged network is never written: the previous checkpoint stays in place.
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergenceError(self._diverged(f"weight {bad[0]} (and {len(bad) - 1} more)", torch.tensor(float("nan"))))
        # The global RNG drives mask lifting: keep it for exact resumption.
        checkpoint["rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()
        checkpoint["state_dict"] = {
            k.replace("._orig_mod", ""): v for k, v in checkpoint["state_dict"].items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"])
        if "cuda_rng_state" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])

    # ------------------------------------------------------------------ validation
    def make_evaluator(self) -> Any:
        from eomt.evaluation import build_evaluator

        return build_evaluator(self.cfg.model)

    def on_validation_epoch_start(self) -> None:
        self.evaluator = self.make_evaluator()
        self._val_predictor = self.predictor()  # one per epoch: its workspace serves every batch

    def validation_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> None:
        from eomt.evaluation import evaluate_batch

        images, targets = batch
        evaluate_batch(self._val_predictor.predict_tensors, self.evaluator, images, targets)

    def predictor(self, task: str | None = None) -> Any:
        """The official inference (resize+pad or sliding windows + post-processing) on this network."""
        from eomt.inference.predictor import Predictor

        network = unwrap_compiled(self.network)
        return Predictor(
            network,
            task=task or self.cfg.model.task,
            device=self.device,
            threshold=self.cfg.train.score_threshold if (task or self.cfg.model.task) == "panoptic" else None,
            overlap_threshold=self.cfg.train.overlap_threshold,
        )

    def on_validation_epoch_end(self) -> None:
        self._val_predictor = None
        metrics = self.evaluator.compute()
        scalars = {f"val/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        # Every process holds the reduced numbers already; log them without another reduction.
        self.log_dict(scalars, sync_dist=False, rank_zero_only=False)
        self.last_metrics = metrics
