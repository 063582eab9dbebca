"""The accuracy benchmark's recipe: one backbone, pretrained once, and the same detector training for every neck.

What every run shares (so a difference between two rows is the neck's):

* **Backbone**: a half-width timm ``resnet18`` (channels 32-256), levels at strides 4, 8, 16, 32. Backbones
  trained from scratch barely learn to *recognise* digits in minutes, so the backbone is first trained once
  on single-digit classification (train digits only, one digit on a cluttered 64 px canvas at 8-56 px), cached
  on disk, and loaded by every run: the stand-in for ImageNet weights.
* **Detector**: torchvision FCOS from :func:`fpn_zoo.create_detector`, with every neck's levels projected by a
  1x1 conv to one head width (64), so the head's width and cost do not follow the neck's; FCOS's level ranges
  are the paper's scaled to the 128 px canvas (``size_range_scale=0.25``).
* **Attachment**: a neck reads the backbone's four levels, or, if it cannot (:data:`ATTACHMENTS`, tried in
  order), the three coarsest (necks written for C3-C5 plus extra levels: NAS-FPN), an FPN's outputs (necks that
  refine levels of one width: BFP, as in Libra R-CNN), or the last stage alone (necks that read one map:
  YOLOF's encoder, CenterNet's, the ViTDet simple pyramid). Each run records which (``inputs``).
* **Training**: the same steps, batch, schedule (linear warm-up, cosine decay) and seeds; AdamW, the backbone
  at a lower learning rate than the neck and head.
* **Dead box regression**: torchvision's FCOS passes its box regression through a ReLU; a run whose regression
  goes negative everywhere predicts only zero-size boxes, which get no gradient, so it never recovers and
  detects nothing (one early run did). When no location of a batch predicts a box of positive area for
  :data:`REVIVE_AFTER` steps in a row, the regression layer is re-initialised as torchvision initialises it and
  its optimizer state dropped; the run records the steps (``revived``). A run whose regression never dies is
  computed exactly as without this guard.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from .regression_guard import REVIVE_AFTER, RegressionGuard
from .scenes import DigitScenes, SceneConfig

__all__ = ["Recipe", "ATTACHMENTS", "REVIVE_AFTER", "RegressionGuard", "attachment", "build_backbone",
           "pretrained_backbone", "build_detector", "train_detector", "cache_dir"]

#: How a neck is attached to the backbone, in the order tried: the first the neck builds on is used.
ATTACHMENTS = ("levels", "c3_c5", "fpn_first", "last_stage")
#: The neck put first for ``fpn_first``.
FIRST_NECK = "fpn"

MEAN = (0.3, 0.3, 0.3)
STD = (0.3, 0.3, 0.3)


@dataclass(frozen=True)
class Recipe:
    """Everything a run depends on besides the neck and the seed.

    The published table uses the defaults; a tiny recipe (few steps and scenes) checks the pipeline.
    """

    backbone: str = "resnet18"
    backbone_channels: Tuple[int, ...] = (32, 64, 128, 256)
    out_indices: Tuple[int, ...] = (1, 2, 3, 4)
    pretrain_steps: int = 1500
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    backbone_lr_scale: float = 0.3
    weight_decay: float = 0.05
    warmup: int = 150
    grad_clip: float = 10.0
    head_channels: int = 64
    head_convs: int = 2
    size_range_scale: float = 0.25
    test_scenes: int = 300
    eval_every: int = 500
    scenes: SceneConfig = field(default_factory=SceneConfig)

    def key(self, *names: str) -> str:
        """A short hash of the named fields (all of them if none is named): what a cached result depends on."""
        data = dataclasses.asdict(self)
        if names:
            data = {n: data[n] for n in names}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


PRETRAIN_FIELDS = ("backbone", "backbone_channels", "out_indices", "pretrain_steps", "pretrain_batch", "pretrain_lr")


def cache_dir() -> Path:
    """Where the pretrained backbone is kept: ``$FPN_ZOO_CACHE`` or ``~/.cache/fpn_zoo``."""
    return Path(os.environ.get("FPN_ZOO_CACHE", Path.home() / ".cache" / "fpn_zoo"))


def build_backbone(recipe: Recipe, out_indices: Optional[Tuple[int, ...]] = None) -> nn.Module:
    """The benchmark's timm ``features_only`` backbone, randomly initialised; ``out_indices`` (default the
    recipe's) picks its levels: the weights are the same for any."""
    import timm

    channels = tuple(recipe.backbone_channels)
    return timm.create_model(recipe.backbone, pretrained=False, features_only=True,
                             out_indices=out_indices if out_indices is not None else recipe.out_indices,
                             channels=channels, stem_width=channels[0])


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def pretrained_backbone(recipe: Recipe, log: Optional[Callable[[str], None]] = None) -> Dict[str, torch.Tensor]:
    """The backbone's weights after single-digit classification, trained once and cached on disk.

    Trained on train digits only (one per 64 px cluttered canvas, 8-56 px), seed 0; the cache file is keyed
    by the recipe fields the pretraining depends on and records the test-digit accuracy it reached.
    """
    path = cache_dir() / f"digits-backbone-{recipe.key(*PRETRAIN_FIELDS)}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    torch.manual_seed(0)
    backbone = build_backbone(recipe)
    classifier = nn.Linear(backbone.feature_info.channels()[-1], 10)
    model = nn.ModuleDict({"backbone": backbone, "classifier": classifier})
    cfg = SceneConfig(canvas=64, min_size=8, max_size=56, max_digits=1, strokes=4)
    train = DigitScenes("train", seed=1, config=cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.pretrain_lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, recipe.pretrain_steps, 100))

    def logits(images: torch.Tensor) -> torch.Tensor:
        return classifier(backbone(_normalise(images))[-1].mean((2, 3)))

    model.train()
    start = time.perf_counter()
    for step, (images, targets) in zip(range(recipe.pretrain_steps), train.batches(recipe.pretrain_batch)):
        labels = torch.stack([t["labels"][0] for t in targets])
        loss = nn.functional.cross_entropy(logits(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step + 1) % 100 == 0:
            log(f"pretrain step {step + 1}/{recipe.pretrain_steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    test = DigitScenes("test", seed=1, config=cfg)
    correct = 0
    with torch.no_grad():
        for i in range(0, 500, 100):
            images, targets = test.batch(range(i, i + 100))
            correct += int((logits(images).argmax(1) == torch.stack([t["labels"][0] for t in targets])).sum())
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": state, "test_accuracy": correct / 500, "recipe": recipe.as_dict()}, tmp)
    os.replace(tmp, path)
    if log is not None:
        log(f"pretrained backbone: test-digit accuracy {correct / 500:.3f}, cached at {path}")
    return state


def _indices(recipe: Recipe, how: str) -> Tuple[int, ...]:
    return {"c3_c5": recipe.out_indices[-3:], "last_stage": recipe.out_indices[-1:]}.get(how, recipe.out_indices)


def attachment(neck: str, recipe: Recipe, neck_args: Optional[Dict[str, Any]] = None) -> str:
    """The first of :data:`ATTACHMENTS` that ``neck`` (with ``neck_args``) builds on.

    Raises:
        ValueError: the neck builds on none of them (each one's reason is given).
    """
    from .. import create_neck

    info = build_backbone(recipe).feature_info
    channels, reductions = info.channels(), info.reduction()
    reasons = []
    for how in ATTACHMENTS:
        picked = [recipe.out_indices.index(i) for i in _indices(recipe, how)]
        spec = FeatureSpec(tuple(channels[k] for k in picked), tuple(reductions[k] for k in picked))
        try:
            if how == "fpn_first":
                spec = create_neck(FIRST_NECK, spec).feature_info
            create_neck(neck, spec, **(neck_args or {}))
            return how
        except (ValueError, TypeError) as e:  # BackboneMismatch is a ValueError
            reasons.append(f"{how}: {e}")
    raise ValueError(f"{neck} builds on none of the benchmark's attachments: " + "; ".join(reasons))


def build_detector(neck: str, recipe: Recipe, backbone_state: Optional[Dict[str, torch.Tensor]] = None,
                   neck_args: Optional[Dict[str, Any]] = None, how: Optional[str] = None) -> nn.Module:
    """FCOS with the benchmark's backbone (loaded from ``backbone_state``) and ``neck``, attached as ``how``
    says (default :func:`attachment`'s choice)."""
    from .. import create_model
    from ..detection import create_detector
    from ..detection.fcos import fcos_head

    how = how if how is not None else attachment(neck, recipe, neck_args)
    backbone = build_backbone(recipe, _indices(recipe, how))
    if backbone_state is not None:
        backbone.load_state_dict(backbone_state)
    if how == "fpn_first":
        backbone = create_model(backbone, neck=FIRST_NECK)
    canvas = recipe.scenes.canvas
    return create_detector(
        "fcos", backbone, neck=neck, num_classes=10, neck_args=neck_args, head_channels=recipe.head_channels,
        min_size=canvas, max_size=canvas, image_mean=list(MEAN), image_std=list(STD),
        size_range_scale=recipe.size_range_scale, score_thresh=0.05, detections_per_img=100,
        head=fcos_head(recipe.head_channels, 10, num_convs=recipe.head_convs),
    )


def backbone_and_neck(model: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """The timm backbone of a :func:`build_detector` model and everything between it and the head projection
    (with ``fpn_first``, the FPN and the neck as one :class:`~fpn_zoo.necks.chain.ChainedNeck`)."""
    from .._factory import BackboneWithNeck
    from ..necks.chain import ChainedNeck

    body = model.backbone.body
    if isinstance(body.backbone, BackboneWithNeck):
        return body.backbone.backbone, ChainedNeck(body.backbone.neck, body.neck)
    return body.backbone, body.neck


def _param_groups(model: nn.Module, recipe: Recipe) -> List[Dict[str, Any]]:
    backbone_ids = {id(p) for p in backbone_and_neck(model)[0].parameters()}
    decay, no_decay, backbone = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in backbone_ids:
            backbone.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": backbone, "lr": recipe.lr * recipe.backbone_lr_scale},
        {"params": decay, "lr": recipe.lr},
        {"params": no_decay, "lr": recipe.lr, "weight_decay": 0.0},
    ]


def train_detector(
    model: nn.Module, recipe: Recipe, seed: int, log: Optional[Callable[[str], None]] = None,
    evaluate: Optional[Callable[[nn.Module], Dict[str, float]]] = None,
    checkpoint: Optional[Path] = None, checkpoint_seconds: float = 300.0, revive_after: int = REVIVE_AFTER,
) -> Dict[str, Any]:
    """Train ``model`` by the recipe on fresh train scenes drawn from ``seed``.

    Returns ``{"seconds", "losses": [(step, loss), ...], "loss_terms": [(step, {term: loss}), ...],
    "curve": [(step, metrics), ...], "revived": [step, ...]}``: the total loss and each of the detector's loss
    terms as running means (weight 0.1 on the newest step) every 50 steps; the curve holds ``evaluate(model)``
    every ``recipe.eval_every`` steps (none when 0); ``seconds`` is training time only, summed over resumptions;
    ``revived`` the steps after which a dead box regression was re-initialised (after ``revive_after`` steps in
    a row without a box of positive area; never when 0; see :class:`RegressionGuard`).

    With ``checkpoint`` (a file path), the whole training state (model, optimizer, schedule, step, curves, RNG)
    is saved there every ``checkpoint_seconds`` of training, and a run that finds a checkpoint of the same
    recipe and seed resumes from it: the scenes are a function of (seed, index), so the resumed run computes
    what the uninterrupted one does. Runs longer than a sitting (hours, for the slowest necks) finish this way.
    """
    torch.manual_seed(seed)
    scenes = DigitScenes("train", seed=seed, config=recipe.scenes)
    opt = torch.optim.AdamW(_param_groups(model, recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, recipe.steps, recipe.warmup))
    params = [p for g in opt.param_groups for p in g["params"]]
    losses: List[Tuple[int, float]] = []
    loss_terms: List[Tuple[int, Dict[str, float]]] = []
    terms: Dict[str, float] = {}  # running mean of each loss term
    curve: List[Tuple[int, Dict[str, float]]] = []
    running: Optional[float] = None
    guard = RegressionGuard(model, revive_after)
    first, before = 0, 0.0  # the step to start from, training seconds of earlier sittings
    identity = {"recipe_key": recipe.key(), "seed": seed}
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file
        if state.get("identity") == identity:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            first, before, running = state["step"], state["seconds"], state["running"]
            losses, curve = [tuple(x) for x in state["losses"]], [tuple(x) for x in state["curve"]]
            loss_terms = [tuple(x) for x in state.get("loss_terms", [])]
            terms = dict(state.get("terms", {}))
            guard.load_state(state.get("guard", {}))
            if log is not None:
                log(f"resumed from {checkpoint} at step {first}")
    start = last_save = time.perf_counter()
    model.train()
    batches = scenes.batches(recipe.batch, start=first * recipe.batch)
    try:
        for step, (images, targets) in zip(range(first, recipe.steps), batches):
            guard.before_step()
            loss_dict = model(list(images), targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            sched.step()
            if guard.after_step(step + 1, opt) and log is not None:
                log(f"step {step + 1}: no box of positive area for {revive_after} steps; box regression re-initialised")
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            for name, term in loss_dict.items():
                terms[name] = term.item() if name not in terms else 0.9 * terms[name] + 0.1 * term.item()
            if (step + 1) % 50 == 0 or step + 1 == recipe.steps:
                losses.append((step + 1, round(running, 4)))
                loss_terms.append((step + 1, {name: round(v, 4) for name, v in terms.items()}))
                if log is not None:
                    log(f"step {step + 1}/{recipe.steps} loss {running:.3f} "
                        f"({before + time.perf_counter() - start:.0f} s)")
            if evaluate is not None and recipe.eval_every and (step + 1) % recipe.eval_every == 0 \
                    and step + 1 < recipe.steps:
                curve.append((step + 1, evaluate(model)))
                model.train()
            now = time.perf_counter()
            if checkpoint is not None and step + 1 < recipe.steps and now - last_save >= checkpoint_seconds:
                _save_checkpoint(Path(checkpoint), {
                    "identity": identity, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "step": step + 1,
                    "seconds": before + now - start, "running": running, "losses": losses, "curve": curve,
                    "terms": terms, "loss_terms": loss_terms, "guard": guard.state()})
                last_save = time.perf_counter()
    finally:
        guard.close()
    return {"seconds": before + time.perf_counter() - start, "losses": losses, "loss_terms": loss_terms,
            "curve": curve, "revived": guard.revived}


def _save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
