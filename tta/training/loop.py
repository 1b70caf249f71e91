"""The DG training loop: leave one domain out, DomainBed's training-domain validation.

For a protocol, a held-out ``target`` domain and a seed:

* every other domain is a source; each is split once, by a seeded permutation
  (``rng_for(seed, "holdout/<domain>")``), into 80 % train and 20 % validation
  (DomainBed's ``holdout_fraction = 0.2``);
* each step takes ``batch_size`` training examples per source domain (epoch-wise seeded
  permutations, so the minibatch of step ``t`` is a pure function of ``(seed, t)``) and
  calls ``method.update``; torch's generator is reseeded from ``(seed, step)`` before every
  step (augmentation, dropout), so no RNG state has to be saved;
* every ``checkpoint_every`` steps and at the end: accuracy on each source validation split
  (model selection: the mean of those, **training-domain validation**; ties keep the
  earlier step) and on the target (logged only, never used to select), then an atomic
  checkpoint ``last.pt`` (model, optimizer, method state, step, best so far) and, on
  improvement, ``best.pt`` (``{"state_dict": the network's weights, "tta_meta": ...}``:
  what ``tta.run --checkpoint`` loads);
* both checkpoints carry ``tta_meta``, plain data naming the model, training method,
  recipe, pretrained weights (and their sha256), BatchNorm mode, seed, protocol and target
  (:func:`tta.models.checkpoint.checkpoint_meta` reads it);
* ``log.jsonl``: one JSON line per step (losses) and per evaluation;
  ``config.json``: the run's identity; ``summary.json``: the result, written last.

Every input is checked before anything is written (the constructor: names, sizes, the
``--out`` folder's writability, the pretrained weights fitting the network; then the data
and the method's setup): a refused start leaves no folder behind. A folder whose
``config.json`` names another run is refused only when it holds progress (``last.pt`` or
``summary.json``); one without a checkpoint is taken over.

A killed run restarted with the same arguments resumes from ``last.pt`` (log lines past
it are dropped and recomputed); on CPU the result is bit-identical to an uninterrupted
run. A finished run (``summary.json`` present) is not retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import tta.models  # noqa: F401 - registers the built-in models
import tta.protocols  # noqa: F401 - registers the dataset readers
import tta.training  # noqa: F401 - registers the built-in training methods
from tta.environment import resolve_device
from tta.errors import UserError
from tta.hparams import resolve
from tta.paths import cache_dir, data_root
from tta.protocols import Protocol, find_spec
from tta.registry import TRAINING_METHODS
from tta.streams import rng_for, to_tensor
from tta.training.augment import AUGMENTATIONS
from tta.download import sha256_of
from tta.models.checkpoint import resolve as resolve_weights
from tta.training.model import bn_mode, build_model, check_pretrained, file_stamp, set_train_mode
from tta.training.spec import find_recipe

EVAL_BATCH = 256


@dataclass
class TrainConfig:
    """What a user asks for; ``None`` means "the recipe's value"."""

    protocol: str
    method: str
    target: str
    seed: int = 0
    hparams: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    checkpoint_every: int | None = None
    batch_size: int | None = None
    pretrained: str | None = None
    model: str | None = None
    out: str | None = None
    data_root: str | None = None
    device: str = "cpu"
    bn: str | None = None


@dataclass
class Split:
    domain: str
    images: Any  # uint8 N x H x W x C (array or lazy)
    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray


class Training:
    """A validated, ready-to-run training. Construction checks every input before any work."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.recipe = find_recipe(config.protocol)
        self.spec = find_spec(config.protocol)
        method_cls = TRAINING_METHODS.get(config.method)
        hp = {**self.recipe.hparams, **config.hparams}
        self.hp = resolve(f"training method {config.method!r}", method_cls.hparams, hp)
        self.method = method_cls(**self.hp)
        self.protocol = Protocol.create(self.spec, data_root(config.data_root))
        if self.protocol.reader.has_severity:
            raise UserError(f"protocol {self.protocol.name!r} has corruption severities, not DG domains")
        domains = self.protocol.domains(None)
        names = [d.name for d in domains]
        if config.target not in names:
            self.protocol.domains([config.target])  # raises the did-you-mean error
            raise UserError(f"target {config.target!r} is not among the domains {', '.join(names)}")
        self.target = next(d for d in domains if d.name == config.target)
        self.sources = [d for d in domains if d.name != config.target]
        self.steps = _given(config.steps, self.recipe.steps)
        self.every = _given(config.checkpoint_every, self.recipe.checkpoint_every)
        self.batch_size = _given(config.batch_size, self.recipe.batch_size)
        for name, value in (("--steps", self.steps), ("--checkpoint-every", self.every),
                            ("--batch-size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be an integer of at least 1, got {value!r}")
        self.model_name = config.model or self.recipe.model or self.spec.model
        self.pretrained = config.pretrained or self.recipe.pretrained
        self.bn, notice = bn_mode(config.bn, self.recipe.bn, self.pretrained)
        #: one-line notices for the user (the CLI prints them): a default that had to change
        self.notices = [notice] if notice else []
        self.device = resolve_device(config.device)
        self.protocol.reader.check(domains, self.protocol.root)
        self.out = Path(config.out).expanduser() if config.out else None
        if self.out is not None:
            check_out_dir(self.out)
        check_pretrained(self.model_name, self.spec.num_classes, self.pretrained, file_stamp(self.pretrained))
        self.pretrained_sha256 = pretrained_digest(self.pretrained)
        self.identity = {
            "protocol": self.protocol.name, "dataset": self.spec.dataset, "method": config.method, "hparams": self.hp,
            "target": self.target.name, "sources": [d.name for d in self.sources], "seed": config.seed,
            "steps": self.steps, "checkpoint_every": self.every, "batch_size": self.batch_size,
            "model": self.model_name, "pretrained": self.pretrained, "bn": self.bn,
            "augment": self.recipe.augment, "holdout_fraction": self.recipe.holdout_fraction,
        }
        if self.pretrained_sha256:
            self.identity["pretrained_sha256"] = self.pretrained_sha256
        self.key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        if self.out is None:
            self.out = default_out(self.identity, self.key)
            check_out_dir(self.out)
        self.meta = {
            "model": self.model_name, "num_classes": self.spec.num_classes, "training_method": self.config.method,
            "recipe": self.recipe.name, "pretrained": self.pretrained, "pretrained_sha256": self.pretrained_sha256,
            "bn": self.bn, "seed": self.config.seed, "protocol": self.protocol.name, "target": self.target.name,
            "sources": ",".join(d.name for d in self.sources), "hparams": json.dumps(self.hp, sort_keys=True),
            "key": self.key,
        }

    # -- data ---------------------------------------------------------------------------
    def load_splits(self) -> tuple[list[Split], Split]:
        splits = []
        for domain in self.sources:
            data = self.protocol.reader.load(domain, self.protocol.root)
            order = rng_for(self.config.seed, f"holdout/{domain.name}").permutation(len(data.labels))
            n_val = int(len(order) * self.recipe.holdout_fraction)
            splits.append(Split(domain.name, data.images, data.labels, np.sort(order[n_val:]), np.sort(order[:n_val])))
        data = self.protocol.reader.load(self.target, self.protocol.root)
        target = Split(self.target.name, data.images, data.labels, np.array([], dtype=np.int64),
                       np.arange(len(data.labels)))
        return splits, target

    def minibatch(self, split: Split, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = split.train[epoch_positions(len(split.train), self.batch_size, step, self.config.seed, split.domain)]
        return to_tensor(split.images[idx], self.device), torch.from_numpy(split.labels[idx]).to(self.device)

    @torch.inference_mode()
    def accuracy(self, split: Split) -> float:
        self.model.eval()
        correct = 0
        for start in range(0, len(split.val), EVAL_BATCH):
            idx = split.val[start:start + EVAL_BATCH]
            logits = self.method.predict(to_tensor(split.images[idx], self.device))
            correct += int((logits.argmax(1).cpu() == torch.from_numpy(split.labels[idx])).sum())
        return correct / max(len(split.val), 1)

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop_after: int | None = None, on_line: Callable[[dict], None] | None = None) -> dict[str, Any] | None:
        """Train (resuming if a checkpoint exists); return the summary, or ``None`` if stopped early."""
        summary_path = self.out / "summary.json"
        if summary_path.is_file() and self._same_run():
            return json.loads(summary_path.read_text())
        if not self._same_run() and any((self.out / name).is_file() for name in ("last.pt", "summary.json")):
            raise UserError(f"{self.out} holds a different training run; give another --out")
        # everything that can fail on the user's input happens before the first file is written
        torch.manual_seed(self.config.seed)
        self.model = build_model(self.model_name, self.spec.num_classes, self.pretrained).to(self.device)
        self.method.setup(self.model, self.spec.num_classes, self.steps)
        augment = AUGMENTATIONS.get(self.recipe.augment)()
        best = {"val_acc": -1.0, "step": 0}
        start = 0
        resuming = self._same_run() and (self.out / "last.pt").is_file()
        if resuming:
            start, best = self._resume()
        sources, target = self.load_splits()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --out {str(self.out)!r} ({exc.strerror or exc})") from None
        if not resuming:  # a folder without a checkpoint holds no progress worth keeping
            for name in ("log.jsonl", "best.pt"):
                (self.out / name).unlink(missing_ok=True)
        _write_atomic(self.out / "config.json", json.dumps(self.identity, indent=1, sort_keys=True).encode())
        _truncate_log(self.out / "log.jsonl", start)
        started = time.perf_counter()
        with open(self.out / "log.jsonl", "a") as log:
            for step in range(start + 1, self.steps + 1):
                torch.manual_seed(self.config.seed * 1_000_003 + step)
                set_train_mode(self.model, self.bn)
                batches = [self.minibatch(split, step - 1) for split in sources]
                losses = self.method.update([(augment(x), y) for x, y in batches])
                self._log(log, {"step": step, **losses}, on_line)
                if any(not np.isfinite(v) for v in losses.values()):
                    raise UserError(f"training diverged at step {step} (losses {losses}); lower the learning rate")
                if step % self.every == 0 or step == self.steps:
                    best = self._evaluate(step, best, sources, target, log, on_line)
                    if stop_after is not None and step >= stop_after and step < self.steps:
                        return None
        summary = {**self.identity, "key": self.key, **{k: v for k, v in best.items() if k != "state"},
                   "checkpoint": str(self.out / "best.pt"), "train_s_last_session": time.perf_counter() - started}
        _write_atomic(summary_path, json.dumps(summary, indent=1, sort_keys=True).encode())
        return summary

    def _evaluate(self, step, best, sources, target, log, on_line) -> dict[str, Any]:
        val = {s.domain: self.accuracy(s) for s in sources}
        val_acc = float(np.mean(list(val.values())))
        target_acc = self.accuracy(target)
        improved = val_acc > best["val_acc"]
        if improved:
            best = {"val_acc": val_acc, "step": step, "val": val, "target_acc": target_acc}
            _save_atomic(self.out / "best.pt", {"state_dict": self.model.net.state_dict(),
                                                "tta_meta": {**self.meta, "step": step}})
        self._log(log, {"step": step, "eval": True, "val_acc": val_acc, "val": val, "target_acc": target_acc,
                        "best_step": best["step"]}, on_line)
        _save_atomic(self.out / "last.pt", {"step": step, "model": self.model.state_dict(),
                                            "method": self.method.state_dict(), "best": json.dumps(best),
                                            "tta_meta": {**self.meta, "step": step}})
        return best

    def _resume(self) -> tuple[int, dict[str, Any]]:
        try:
            state = torch.load(self.out / "last.pt", map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.method.load_state_dict(state["method"])
        except Exception as exc:
            raise UserError(f"cannot resume from {self.out / 'last.pt'} ({type(exc).__name__}: {exc}); "
                            "delete the folder to start over") from None
        return int(state["step"]), json.loads(state["best"])

    def _same_run(self) -> bool:
        path = self.out / "config.json"
        return path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(self.identity, sort_keys=True))

    @staticmethod
    def _log(log, line: dict, on_line) -> None:
        log.write(json.dumps(line, sort_keys=True) + "\n")
        log.flush()
        if on_line is not None:
            on_line(line)


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it was not given (``None``): 0 is a value to check, not "the default"."""
    return default if value is None else value


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any work (creates nothing)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a folder")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {str(out)!r} cannot be created: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {str(out)!r} is not writable (no write permission on {str(existing)!r})")


def pretrained_digest(pretrained: str) -> str:
    """sha256 of a local pretrained weights file (part of the run's identity), ``""`` otherwise."""
    if pretrained in ("none", "timm"):
        return ""
    return sha256_of(resolve_weights(pretrained))


def epoch_positions(n: int, batch_size: int, step: int, seed: int, key: str) -> np.ndarray:
    """Positions ``step*B .. (step+1)*B`` of the endless sequence of seeded epoch permutations of ``range(n)``."""
    out: list[np.ndarray] = []
    position, wanted = step * batch_size, batch_size
    while wanted:
        epoch, offset = divmod(position, n)
        take = rng_for(seed, f"{key}/epoch{epoch}").permutation(n)[offset:offset + wanted]
        out.append(take)
        position += len(take)
        wanted -= len(take)
    return np.concatenate(out)


def default_out(identity: dict[str, Any], key: str) -> Path:
    return (cache_dir() / "train" / identity["protocol"] / identity["method"] / identity["target"]
            / f"seed{identity['seed']}-{key}")


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines of steps after ``last_step`` (work a killed run did past its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a line cut by the kill: everything after it is gone too
    _write_atomic(path, "".join(f"{line}\n" for line in keep).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


def _save_atomic(path: Path, obj: Any) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as handle:
        torch.save(obj, handle)
    os.replace(handle.name, path)
