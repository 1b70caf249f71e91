"""The runner: one straight line from protocol to store.

    for each segment of the scenario:           (a segment = one domain = one result row)
        reset the method if the scenario says so
        for each batch:  logits = method(batch.x)          # x only: labels never reach it
                         metrics.update(logits, batch.y)   # labels go to the metrics
        store.append(row)                                  # committed at once

Everything that decides a result (protocol, method, resolved hyperparameters, seed,
model, checkpoint hash and, for a DG checkpoint, its training method and pretrained
weights, the data actually read (root and fingerprint, :mod:`tta.fingerprint`), severity,
batch size, example cap, the reader's resolved input size and split and any sliding window (segmentation), and for
non-episodic scenarios the domain sequence) is hashed
into ``run_key``; finished cells are skipped. Each cell is claimed in the store before it
is computed (:meth:`tta.store.ResultStore.claim`), so two processes never compute the
same cell: the second waits for the first's row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

import torch

import tta
import tta.methods  # noqa: F401 - registers the built-in methods
import tta.models  # noqa: F401 - registers the built-in models
import tta.protocols  # noqa: F401 - registers the dataset readers
from tta import scenarios as _scenarios  # noqa: F401 - registers the scenarios
from tta.environment import describe, git_revision, resolve_device
from tta.errors import UserError
from tta.fingerprint import PROCEDURAL, fingerprint
from tta import metrics as _metrics  # noqa: F401 - registers the classification metrics
from tta import segmentation_metrics as _segmentation_metrics  # noqa: F401 - registers the segmentation metrics
from tta.methods.base import Method
from tta.models import create_model, load_into
from tta.models.checkpoint import checkpoint_meta, resolve as resolve_checkpoint
from tta.models.pretrained import qualify, timm_normalization
from tta.models.seg_inference import sliding_window, window_text
from tta.paths import data_root
from tta.protocols import Protocol, find_spec
from tta.protocols.base import SourceImages
from tta.registry import METHODS, MODELS, TASKS
from tta.scenarios import Segment, StreamSettings, create_scenario
from tta.store import BUSY, CLAIM_TTL_S, CLAIMED, DONE, ResultStore, new_owner
from tta.streams import prefetch, shuffled, to_tensor

#: the whole sequence of a non-independent scenario is claimed as one unit under this domain name
SEQUENCE_CLAIM = "*sequence*"
#: seconds between two looks at a cell another process holds
WAIT_POLL_S = 1.0

#: batches prepared ahead on a background thread while the method runs (:func:`tta.streams.prefetch`; 0: none)
PREFETCH_DEPTH = 2

#: from this many images a run compiles the method's model by default (see :func:`compile_pays`)
COMPILE_MIN_IMAGES = 100_000

#: ``on_batch(index, total, key, batches, images, batch_images)``, see :meth:`Run.execute`
BatchCallback = Callable[[int, int, str, int, int, int], None]


#: checkpoint references that name published or built-in weights (never a tta.train checkpoint)
NAMED_WEIGHTS = ("builtin:", "timm:", "torchvision:", "robustbench:")


@dataclass
class RunConfig:
    """What a user asks for; ``None`` means "the protocol spec's value"."""

    protocol: str
    method: str
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    model: str | None = None
    checkpoint: str | None = None
    domains: list[str] | None = None
    severity: int | None = None
    batch_size: int | None = None
    n_examples: int | None = None
    scenario: str | None = None
    data_root: str | None = None
    device: str = "cpu"
    #: ``torch.compile`` the adapted model: ``True`` always, ``False`` never, ``None`` when it pays
    #: (:func:`compile_pays`); not part of the results' identity (``extra.compiled`` says which ran)
    compile: bool | None = None
    #: ``(height, width)`` the reader resizes images to (segmentation); ``None``: the spec's, else the reader's
    input_size: tuple[int, int] | None = None
    #: dataset split (``train`` / ``val`` / ``test``, segmentation readers); ``None``: the spec's, else ``val``
    split: str | None = None
    #: ``((crop_h, crop_w), (stride_h, stride_w))``: sliding-window segmentation inference; ``None``: whole image
    sliding_window: tuple[tuple[int, int], tuple[int, int]] | None = None


class Run:
    """A validated, ready-to-execute run. Construction checks every input before any work."""

    def __init__(self, config: RunConfig) -> None:
        spec = find_spec(config.protocol)
        # torchvision:<TAG> and robustbench:<name> leave the architecture implicit: written out first
        model, checkpoint = qualify(config.checkpoint, config.model, lambda: spec.model)
        config = self.config = replace(config, model=model, checkpoint=checkpoint)
        self.first_batch_s: float | None = None
        self.compiled: bool | None = None
        self._segments_to_run = 1
        self.method_cls = METHODS.get(config.method)
        self.method: Method = self.method_cls(**config.hparams)
        self.scenario = create_scenario(config.scenario or spec.scenario)
        self.scenario_name = self.scenario.label  # name plus its parameters, e.g. dirichlet:delta=0.1
        for name, value in (("batch size", config.batch_size), ("--n-examples", config.n_examples)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        self.protocol = Protocol.create(spec, data_root(config.data_root), config.input_size, config.split)
        missing = [k for k in self.method.side_inputs if k not in self.protocol.reader.side_inputs]
        if missing:
            raise UserError(f"method {self.method.name!r} needs side input {missing[0]!r}, which protocol "
                            f"{self.protocol.name!r} does not provide")
        self.domains = self.protocol.domains(config.domains, config.severity)
        self.batch_size = config.batch_size or spec.batch_size
        self.n_examples = config.n_examples or spec.n_examples
        self.device = resolve_device(config.device)
        self.checkpoint_meta = self._checkpoint_meta(config.checkpoint)
        self.model_name = config.model or self.checkpoint_meta.get("model") or spec.model
        if config.model:
            _check_model_name(config.model)
        self.checkpoint = config.checkpoint or (spec.checkpoint if self.model_name == spec.model else None)
        if self.checkpoint is None:
            why = (f"protocol {spec.name!r} names no checkpoint" if self.model_name == spec.model
                   else f"model {self.model_name!r} is not the protocol's model ({spec.model})")
            raise UserError(f"{why}; give --checkpoint PATH or URL")
        self.model = create_model(self.model_name, spec.num_classes, spec.task)
        self._normalize_as_trained()
        #: identity and row ``extra`` of sliding-window inference (absent for whole-image inference)
        self.window_extra = {}
        if config.sliding_window:
            self.model = sliding_window(self.model, *config.sliding_window)
            self.window_extra = {"sliding_window": window_text(config.sliding_window)}
        try:
            loaded = load_into(self.model.net, self.checkpoint,
                               spec.checkpoint_sha256 if not config.checkpoint else None)
        except UserError as exc:
            named = self.checkpoint.startswith(NAMED_WEIGHTS)  # names its architecture itself
            hint = "" if config.model or named else "; if it holds another architecture, name it with --model"
            raise UserError(f"{exc}{hint}") from None
        self.checkpoint_sha256 = loaded.sha256
        self.protocol.reader.check(self.domains, self.protocol.root)
        #: clean source images of a method that needs them (EATA's Fisher), read when the run starts
        self.source = self._source_images()
        files = self.protocol.reader.data_files(self.domains, self.protocol.root)
        #: the test data's fingerprint (a table key of the leaderboard); clean source images a method reads
        #: have their own, part of the run identity, so a stored row is served only for the same both
        self.data_fingerprint = fingerprint(files, self.protocol.root)
        self.source_fingerprint = (fingerprint(self.source.files, self.protocol.root)
                                   if self.source is not None and files is not None else None)
        #: the data root is part of the identity only where data is read from it
        self.data_root = None if self.data_fingerprint == PROCEDURAL else str(self.protocol.root)
        self.run_key = self._run_key()

    def _normalize_as_trained(self) -> None:
        """``timm:<model>.<tag>`` weights carry their own input normalization: a timm model created by
        name takes it; a registered model whose declared normalization differs is refused."""
        trained = timm_normalization(self.checkpoint)
        if trained is None or not hasattr(self.model, "mean"):
            return
        declared = (tuple(self.model.mean.flatten().tolist()), tuple(self.model.std.flatten().tolist()))
        if self.model_name in MODELS:
            if any(abs(a - b) > 1e-6 for a, b in zip(sum(declared, ()), sum(trained, ()))):
                raise UserError(f"model {self.model_name!r} is registered with input mean {declared[0]} and std "
                                f"{declared[1]}, but {self.checkpoint} was trained with mean {trained[0]} and std "
                                f"{trained[1]}; register the model with its weights' normalization")
            return
        with torch.no_grad():
            self.model.mean.copy_(torch.tensor(trained[0]).view_as(self.model.mean))
            self.model.std.copy_(torch.tensor(trained[1]).view_as(self.model.std))

    def _source_images(self) -> SourceImages | None:
        """The reader's clean source images when the method wants some; refuse when it has none."""
        wanted = self.method.source_images_wanted()
        if not wanted:
            return None
        source = self.protocol.reader.source_images(self.protocol.root, wanted)
        if source is None:
            raise UserError(f"method {self.method.name!r} needs {wanted} clean source images for "
                            f"{self.method.source_images_use or 'its source statistics'}; protocol "
                            f"{self.protocol.name!r} has none under {self.protocol.root}")
        return source

    def _fit_source(self) -> None:
        """Hand the method its clean source images: a seeded subset, in batches of the run's batch size."""
        images = self.source.read()
        order = shuffled(len(images), self.config.seed, "source-images", self.method.source_images_wanted())
        chunks = (to_tensor(images[order[i:i + self.batch_size]], self.device)
                  for i in range(0, len(order), self.batch_size))
        with torch.enable_grad():
            self.method.fit_source(chunks, self.source.description)

    @staticmethod
    def _checkpoint_meta(checkpoint: str | None) -> dict[str, Any]:
        """What a ``tta.train`` checkpoint says about itself (model, training method, weights); ``{}`` else."""
        if not checkpoint or "://" in checkpoint or checkpoint.startswith(NAMED_WEIGHTS):
            return {}
        return checkpoint_meta(resolve_checkpoint(checkpoint))

    def _provenance(self) -> dict[str, Any]:
        """The DG checkpoint's training method and pretrained weights (identity, row ``extra``)."""
        return {k: self.checkpoint_meta[k] for k in ("training_method", "pretrained") if k in self.checkpoint_meta}

    def _run_key(self) -> str:
        identity = {
            "protocol": self.protocol.name, "dataset": self.protocol.spec.dataset, "scenario": self.scenario_name,
            "method": self.method.name, "hparams": self.method.hp, "seed": self.config.seed,
            "model": self.model_name, "checkpoint_sha256": self.checkpoint_sha256,
            "batch_size": self.batch_size, "n_examples": self.n_examples,
            "severity": sorted({d.severity for d in self.domains}, key=str),
            "data_fingerprint": self.data_fingerprint, "data_root": self.data_root, **self._provenance(),
            **self.protocol.reader.identity(), **self.window_extra,
        }
        if self.source is not None:  # the source images a method estimated something on
            identity["source_images"] = self.source.description
            identity["source_fingerprint"] = self.source_fingerprint
        if not self.scenario.independent:
            identity["sequence"] = [d.key for d in self.domains]
        if self.protocol.reader.data_source is not None:  # official and self-built data never share cells
            identity["data_source"] = self.protocol.reader.data_source
        if self.protocol.reader.corruption_engine is not None:  # nor data of two engine versions
            identity["corruption_engine"] = self.protocol.reader.corruption_engine
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def base_row(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key, "protocol": self.protocol.name, "dataset": self.protocol.spec.dataset,
            "scenario": self.scenario_name, "method": self.method.name, "hparams": self.method.hp,
            "seed": self.config.seed, "model": self.model_name, "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256, "batch_size": self.batch_size,
            "data_root": self.data_root, "data_fingerprint": self.data_fingerprint,
            "version": tta.__version__, "git_rev": git_revision(), "env": describe(self.device),
        }

    def execute(self, store: ResultStore | None = None, force: bool = False,
                on_row: Callable[[dict[str, Any]], None] | None = None,
                on_batch: BatchCallback | None = None) -> list[dict[str, Any]]:
        """Run every unfinished segment; return the rows of all segments (stored ones included).

        ``on_batch(index, total, key, batches, images, batch_images)`` is called after every batch (the
        segment's position, the number of segments and its key, the segment's batches and images so
        far, this batch's images),
        e.g. by a progress line. ``first_batch_s`` holds the seconds from the package's import to
        the end of the run's first batch (``tta.STARTED``), once there was one.

        Each independent segment is claimed before it is computed; one another process holds
        is done last, after waiting for that process's row (or for its claim to lapse). A
        non-independent sequence is claimed as a whole.
        """
        finished = set() if (store is None or force) else store.finished(self.run_key)
        settings = StreamSettings(self.batch_size, self.config.seed, self.n_examples, str(self.device))
        segments = list(self.scenario.segments(self.protocol, self.domains, settings))
        keys = [s.key for s in segments]
        if all(key in finished for key in keys):
            return _stored_rows(store, self.run_key, keys)
        claims = _Claims(store, self.run_key, force)
        if not self.scenario.independent and not claims.take(SEQUENCE_CLAIM):
            if all(key in store.finished(self.run_key) for key in keys):  # the other process finished it
                claims.release_all()
                return _stored_rows(store, self.run_key, keys)
            finished = set() if force else store.finished(self.run_key)
        torch.manual_seed(self.config.seed)
        self.model.to(self.device)
        self.method.setup(self.model)
        if self.source is not None:
            self._fit_source()
        self.compiled: bool | None = None  # decided at the first segment, once its size is known
        self._segments_to_run = sum(1 for s in segments if s.key not in finished) or len(segments)
        base = self.base_row()
        rows: list[dict[str, Any]] = []
        waiting = [(i, s) for i, s in enumerate(segments)]
        try:
            while waiting:
                deferred = []
                for index, segment in waiting:
                    if self.scenario.independent:
                        if segment.key in finished:
                            continue
                        outcome = claims.try_take(segment.key)
                        if outcome == DONE:
                            continue
                        if outcome == BUSY:
                            deferred.append((index, segment))
                            continue
                    if segment.reset_before:
                        self.method.reset()
                    row = {**base, **self.run_segment(segment, claims.renewer(segment.key),
                                                      _indexed(on_batch, index, len(segments))),
                           "domain_index": index}
                    if segment.key in finished:
                        continue  # recomputed only to reach the state of later segments
                    row["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    if store is not None:
                        store.append(row)
                        claims.release(segment.key)
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
                if deferred and deferred == waiting:
                    claims.announce_wait(len(deferred))
                    time.sleep(WAIT_POLL_S)
                waiting = deferred
        finally:
            claims.release_all()
        by_domain = {r["domain"]: r for r in _stored_rows(store, self.run_key, keys)}
        by_domain.update({r["domain"]: r for r in rows})
        return [by_domain[key] for key in keys if key in by_domain]

    def run_segment(self, segment: Segment, heartbeat: Callable[[], None] = lambda: None,
                    on_batch: Callable[[str, int, int, int], None] | None = None) -> dict[str, Any]:
        metrics = TASKS.get(self.protocol.spec.task)(self.protocol.spec.num_classes)
        method_s = 0.0
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        grad_context = contextlib.nullcontext if self.method.needs_grad else torch.inference_mode
        started = time.perf_counter()
        stream, data_source = segment.open()
        if self.compiled is None:
            self._decide_compile(getattr(stream, "n_images", None))
        nonfinite_resets = 0
        batches = images = 0
        for batch in prefetch(stream, PREFETCH_DEPTH):
            tick = time.perf_counter()
            with grad_context():
                extras = {k: batch.extras[k] for k in self.method.side_inputs}
                logits = self._forward(batch.x, extras, segment.key, metrics.expected_shape(batch.x))
            if cuda:
                torch.cuda.synchronize(self.device)
            method_s += time.perf_counter() - tick
            metrics.update(logits, batch.y)
            if segment.observe is not None:
                segment.observe(batch, logits)
            if self.method.diverged():  # stability: a non-finite method restarts from its snapshot
                self.method.reset()
                nonfinite_resets += 1
            heartbeat()
            batches, images = batches + 1, images + len(batch.x)
            if self.first_batch_s is None:
                self.first_batch_s = time.perf_counter() - tta.STARTED
            if on_batch is not None:
                on_batch(segment.key, batches, images, len(batch.x))
        wall_s = time.perf_counter() - started
        result = metrics.compute()
        return {
            "domain": segment.key, "severity": segment.severity, "data_source": data_source, **result,
            "images_per_s": result["n"] / method_s if method_s > 0 else float("nan"),
            "method_s": method_s, "wall_s": wall_s, "peak_mem_mb": _peak_memory_mb(self.device),
            "extra": {**result.get("extra", {}), **self.method.row_extra(), **segment.extra(),
                      **self._engine_extra(), **self._provenance(), **self.protocol.reader.row_extra(segment.key),
                      **self.window_extra, "nonfinite_resets": nonfinite_resets, "compiled": self.compiled,
                      **({"source_fingerprint": self.source_fingerprint} if self.source_fingerprint else {})},
        }

    def _decide_compile(self, segment_images: int | None) -> None:
        """Compile the method's model now (before the first batch) if asked, or, by default, if it pays."""
        choice = self.config.compile
        if choice is None:
            images = None if segment_images is None else segment_images * self._segments_to_run
            choice = compile_pays(images, self.method, self.device)
        if choice:
            self.method.model = torch.compile(self.method.model)
        self.compiled = bool(choice)

    def _engine_extra(self) -> dict[str, int]:
        engine = self.protocol.reader.corruption_engine
        return {} if engine is None else {"corruption_engine": engine}

    def _forward(self, x: torch.Tensor, extras: dict[str, torch.Tensor], domain: str,
                 expected: tuple[int, ...]) -> torch.Tensor:
        try:
            logits = self.method.forward(x, **extras)
        except UserError:
            raise
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit() too: one error line, finished rows kept
            raise UserError(f"method {self.method.name!r} failed on domain {domain}: {type(exc).__name__}: {exc}") from None
        if not isinstance(logits, torch.Tensor) or not _shape_matches(tuple(logits.shape), expected):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            wanted = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
            raise UserError(f"method {self.method.name!r} returned {got} on domain {domain}; "
                            f"expected logits of shape {wanted}")
        return logits


class _Claims:
    """This run's claims on its cells in ``store`` (no-ops without a store)."""

    def __init__(self, store: ResultStore | None, run_key: str, force: bool) -> None:
        self.store, self.run_key, self.force = store, run_key, force
        self.owner = new_owner()
        self.held: dict[str, float] = {}  # domain -> time of the last claim or renewal
        self.announced = False

    def try_take(self, domain: str) -> str:
        if self.store is None:
            return CLAIMED
        outcome = self.store.claim(self.run_key, domain, self.owner, force=self.force)
        if outcome == CLAIMED:
            self.held[domain] = time.monotonic()
        return outcome

    def take(self, domain: str) -> bool:
        """Claim ``domain``, waiting while another process holds it; ``True`` when nobody else
        held it (``False``: we waited, and the other process may have finished the work)."""
        waited = False
        while (outcome := self.try_take(domain)) == BUSY:
            self.announce_wait(1)
            waited = True
            time.sleep(WAIT_POLL_S)
        if outcome == DONE:  # a sequence claim never meets a row; keep the claim regardless
            self.held[domain] = time.monotonic()
        return not waited

    def renewer(self, domain: str) -> Callable[[], None]:
        """A heartbeat for long segments: renews the claim on ``domain`` (and the sequence's)."""
        def renew() -> None:
            now = time.monotonic()
            for held, since in list(self.held.items()):
                if held in (domain, SEQUENCE_CLAIM) and now - since > CLAIM_TTL_S / 4:
                    self.store.claim(self.run_key, held, self.owner, force=True)
                    self.held[held] = now

        return renew if self.store is not None else (lambda: None)

    def release(self, domain: str) -> None:
        if self.store is not None and self.held.pop(domain, None) is not None:
            self.store.release(self.run_key, domain, self.owner)

    def release_all(self) -> None:
        for domain in list(self.held):
            self.release(domain)

    def announce_wait(self, count: int) -> None:
        if not self.announced:
            print(f"waiting for {count} cell(s) another process is computing (store {self.store.path})",
                  file=sys.stderr, flush=True)
            self.announced = True


def _check_model_name(name: str) -> None:
    """An unknown ``--model`` is named as such (with the closest names), before any other check."""
    if name in MODELS:
        return
    import timm

    if not timm.list_models(name):
        raise UserError(f"{MODELS.unknown_message(name)}; it is not a timm model name either")


def _shape_matches(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    """``shape`` is ``expected`` where ``expected`` is not ``None`` (a segmentation metric takes any h x w)."""
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _stored_rows(store: ResultStore | None, run_key: str, keys: list[str]) -> list[dict[str, Any]]:
    """The stored rows of this run's segments, in segment order."""
    if store is None:
        return []
    latest = {r["domain"]: r for r in store.rows() if r["run_key"] == run_key}
    return [latest[key] for key in keys if key in latest]


def compile_pays(images: int | None, method: Method, device: torch.device) -> bool:
    """Whether ``torch.compile`` repays its warm-up on a run of ``images`` (estimated from the first
    segment's size x the segments to run; ``None``: unknown) for ``method`` on ``device``.

    Measured with ``benchmarks/bench_compile.py`` (ResNet-20, batch 200, CIFAR-10-C, 1 thread, torch
    2.14.1 CPU, 2026-12-02): a cold compile costs about 30 s (inductor's on-disk
    cache makes later runs start in about 1 s), and the compiled loop is 1.2-1.25x faster for
    ``bn_adapt`` (990 against 800 img/s) and ``tent``: about 0.25 ms saved per image, so the cold
    warm-up is repaid after roughly 120,000 images. Compile therefore runs by default from
    :data:`COMPILE_MIN_IMAGES` images (a whole CIFAR-10-C run, 150,000, but not the smoke benchmark,
    28,000), only for methods that declare ``compilable`` (their model is called on whole batches
    of one shape), and only where a compiler exists (CPU: a C++ compiler on ``PATH``; CUDA: triton).
    """
    if images is None or images < COMPILE_MIN_IMAGES or not getattr(method, "compilable", False):
        return False
    return compiler_available(device)


def compiler_available(device: torch.device) -> bool:
    """Whether inductor can generate code for ``device`` here."""
    import importlib.util
    import shutil

    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def _indexed(on_batch: BatchCallback | None, index: int, total: int) -> Callable[[str, int, int, int], None] | None:
    """``on_batch`` with the segment's position bound (``None`` stays ``None``)."""
    if on_batch is None:
        return None
    return lambda key, batches, images, delta: on_batch(index, total, key, batches, images, delta)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors in this segment. CPU: peak resident size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
