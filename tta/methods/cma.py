"""``cma``: Contrastive Model Adaptation (Bruggemann et al., ICCV 2023), online.

"Contrastive Model Adaptation for Cross-Condition Robustness in Semantic Segmentation"
(arXiv:2303.05194). Each adverse-condition image ``x`` comes with a normal-condition
``reference`` of the same place (a label-free side input). The encoder ``f`` is adapted;
the decoder stays frozen. With a projection head ``g`` (1x1 conv, ReLU, 1x1 conv to
``feat_dim``) and an EMA copy ``(f', g')`` of encoder and head:

    anchors   a = g(f(x))                   positives  p = warp(g'(f'(reference)))
    negatives: a queue of pooled g'(f'(x)) embeddings of earlier adverse images

Anchor and positive maps are confidence-weighted and average-pooled to a ``grid x grid``
patch grid, L2-normalized, and patches with mean confidence below the threshold are dropped;
the loss per patch is InfoNCE with temperature ``tau``

    L_c = -log( exp(a.p / tau) / (exp(a.p / tau) + sum_k exp(a.q_k / tau)) )

plus the normalized entropy of the segmentation output, ``L_e = mean_pixels H(softmax(logits)) / log C``:
``L = contrastive_weight * L_c + entropy_weight * L_e``, one AdamW step per batch (head
learning rate x ``head_lr_factor``). EMA momentum ``m_t = min(1 - 1/(t+1), ema_momentum)``.
Defaults follow the paper's public configuration (tau 0.3, 7x7 grid, queue 65,536 x 128,
threshold 0.2, EMA 0.9999, head lr x10, both loss weights 1); the contrastive warm-up
(2,500 steps with detached anchors) is ``warmup_steps`` (default 0: an online stream is
too short), and the offline self-training on pseudo-labels is not part of this online method.
The learning rate 1e-5 is this project's choice for one online pass (on ``streets_smoke``
night/fog, 1e-4 lowered mIoU below the source model and 1e-3 collapsed it).

Alignment: the paper warps the reference features onto the adverse image with a dense
matching network (UAWarpC) and uses its certainty as confidence. No warping network is
shipped, so alignment is the identity with confidence 1 (recorded as ``warp: none`` in
every result row's ``extra``).

What it adapts (declared in ``setup``): every parameter of ``model.net.encoder``
(BatchNorm layers keep normalizing with the source statistics). Method-owned state (head,
EMA copies, queue, optimizer, step) is rebuilt bit for bit on ``reset``. The model must
expose ``net.encoder`` whose input is the normalized image and whose output (or deepest
output, for a list or a ``{"out": ...}`` dict) is the feature map, as tta's segmenters do.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from tta.errors import UserError
from tta.hparams import HParam
from tta.methods.base import Method
from tta.registry import register_method


def deepest(features) -> torch.Tensor:
    """The deepest feature map of an encoder output: a tensor, a list (last) or a dict (``out``)."""
    if isinstance(features, dict):
        return features["out"]
    if isinstance(features, (list, tuple)):
        return features[-1]
    return features


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the softmax entropy divided by log(C) (in [0, 1])."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean() / math.log(logits.shape[1])


def pool_patches(embedding: torch.Tensor, grid: int) -> torch.Tensor:
    """``N x D x h x w`` -> ``(N * grid * grid) x D`` average-pooled patch embeddings."""
    return F.adaptive_avg_pool2d(embedding, grid).permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, confidence: torch.Tensor, queue: torch.Tensor,
                     grid: int, temperature: float, threshold: float) -> torch.Tensor:
    """Confidence-weighted patch InfoNCE of CMA (positives: aligned reference, negatives: the queue ``D x K``)."""
    a = pool_patches(anchor * confidence, grid)
    p = pool_patches(positive * confidence, grid)
    keep = (a.norm(dim=1) > 0) & (p.norm(dim=1) > 0) & (pool_patches(confidence, grid)[:, 0] >= threshold)
    if not keep.any():
        return anchor.sum() * 0.0
    a, p = F.normalize(a[keep], dim=1), F.normalize(p[keep], dim=1)
    logits = torch.cat([(a * p).sum(1, keepdim=True), a @ queue], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(a), dtype=torch.long, device=a.device))


class ProjectionHead(nn.Sequential):
    """1x1 conv (C -> C), ReLU, 1x1 conv (C -> feat_dim); last layer N(0, 0.01) init, zero bias."""

    def __init__(self, channels: int, feat_dim: int) -> None:
        super().__init__(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, feat_dim, 1))
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self[0].bias)
        nn.init.normal_(self[2].weight, std=0.01)
        nn.init.zeros_(self[2].bias)


@register_method("cma")
class CMA(Method):
    """CMA (Bruggemann et al. 2023): contrastive encoder adaptation with normal-condition references."""

    needs_grad = True
    side_inputs = ("reference",)
    hparams = {
        "lr": HParam(1e-5, "AdamW learning rate of the encoder", 0.0, 1.0, search=(1e-6, 3e-6, 1e-5, 3e-5, 1e-4)),
        "head_lr_factor": HParam(10.0, "projection-head learning rate / lr", 0.0, 1e4),
        "weight_decay": HParam(0.01, "AdamW weight decay", 0.0, 1.0),
        "contrastive_weight": HParam(1.0, "weight of the contrastive loss", 0.0, 100.0, search=(0.1, 1.0, 10.0)),
        "entropy_weight": HParam(1.0, "weight of the normalized-entropy loss", 0.0, 100.0, search=(0.0, 0.1, 1.0)),
        "temperature": HParam(0.3, "InfoNCE temperature tau", 1e-3, 10.0),
        "grid": HParam(7, "patch grid size for pooling", 1, 64),
        "queue_len": HParam(65536, "number of negatives in the queue", 1, 2**22),
        "feat_dim": HParam(128, "projection dimension", 1, 4096),
        "confidence_threshold": HParam(0.2, "minimum mean confidence of a patch", 0.0, 1.0),
        "ema_momentum": HParam(0.9999, "EMA momentum cap of the momentum encoder", 0.0, 1.0),
        "warmup_steps": HParam(0, "steps with detached anchors (only the head learns)", 0, 10**7),
    }

    def configure(self, model: nn.Module) -> None:
        self.encoder = getattr(getattr(model, "net", model), "encoder", None)
        if not isinstance(self.encoder, nn.Module):
            raise UserError("method 'cma' needs a segmenter that exposes its feature extractor as `net.encoder` "
                            "(tta's deeplab* and street_seg models do)")
        self.params = [p for p in self.encoder.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        captured = self._captured = {}

        def capture(module, inputs, output):  # a plain closure: deep copies of the encoder share no method state
            captured["features"] = deepest(output)

        self.encoder.register_forward_hook(capture)
        self.head: ProjectionHead | None = None
        self._head_init: dict[str, torch.Tensor] = {}
        dim, length = self.hp["feat_dim"], self.hp["queue_len"]
        self._queue_init = F.normalize(torch.randn(dim, length), dim=0)

    def touched_tensors(self):
        return self.params

    def reset_state(self) -> None:
        """Rebuild everything the method owns from the (restored) encoder and the saved initial head."""
        device = self.params[0].device
        self.queue = self._queue_init.to(device).clone()
        self.queue_ptr = 0
        self.step = 0
        self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.ema_encoder._forward_hooks.clear()
        if self.head is not None:
            self.head.load_state_dict(self._head_init)
            self._build_optimizer_and_ema_head()

    def _build_head(self, channels: int, device: torch.device) -> None:
        self.head = ProjectionHead(channels, self.hp["feat_dim"]).to(device)
        self._head_init = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        self._build_optimizer_and_ema_head()

    def _build_optimizer_and_ema_head(self) -> None:
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False)
        lr, decay = self.hp["lr"], self.hp["weight_decay"]
        self.optimizer = torch.optim.AdamW([
            {"params": self.params, "lr": lr},
            {"params": list(self.head.parameters()), "lr": lr * self.hp["head_lr_factor"]},
        ], lr=lr, weight_decay=decay)

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        self.reset_state()

    @torch.no_grad()
    def _update_ema(self) -> None:
        m = min(1.0 - 1.0 / (self.step + 1.0), self.hp["ema_momentum"])
        pairs = [(self.encoder, self.ema_encoder), (self.head, self.ema_head)]
        for live, ema in pairs:
            for p, q in zip(live.parameters(), ema.parameters()):
                q.mul_(m).add_(p.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def _enqueue(self, negatives: torch.Tensor) -> None:
        keys = F.normalize(pool_patches(negatives, self.hp["grid"]), dim=1)
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % self.queue.shape[1]
        self.queue[:, slots] = keys.T
        self.queue_ptr = int((self.queue_ptr + len(keys)) % self.queue.shape[1])

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        features = self._captured.pop("features")
        if self.head is None:
            self._build_head(features.shape[1], features.device)
        if self.step < self.hp["warmup_steps"]:
            features = features.detach()
        anchor = self.head(features)
        with torch.no_grad():
            self._update_ema()
            # the EMA encoder sees what the model's network sees (channel order, normalization, stride padding)
            both = getattr(self.model, "network_input", lambda t: t)(torch.cat([x, reference]))
            negative, positive = self.ema_head(deepest(self.ema_encoder(both))).chunk(2)
            confidence = torch.ones_like(positive[:, :1])  # identity alignment (no warping network)
        loss = self.hp["contrastive_weight"] * contrastive_loss(
            anchor, positive, confidence, self.queue, self.hp["grid"], self.hp["temperature"],
            self.hp["confidence_threshold"])
        loss = loss + self.hp["entropy_weight"] * normalized_entropy(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._enqueue(negative)
        self.step += 1
        self.last_loss = loss.item()
        return logits.detach()

    def row_extra(self):
        return {"warp": "none", "adapted": "encoder"}
