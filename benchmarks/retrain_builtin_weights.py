"""Regenerate a built-in checkpoint with its recipe and compare it with the shipped file.

    python benchmarks/retrain_builtin_weights.py smoke_cnn|street_seg --out FILE

Trains the model with the recipe that made ``tta/models/weights/<name>-v<N>.pt``
(``tta.models.smoke_cnn.train_smoke_cnn`` / ``tta.models.street_seg.train_street_seg``),
saves the state dict to ``FILE`` with ``torch.save`` and prints the wall time, the file's
size and sha256, and how it compares with the shipped weights: the content digest of both
(:func:`tta.models.builtin_training.state_digest`, equal when the tensors are bit for bit
equal) and the largest absolute parameter difference. To ship the new file, copy it over
the packaged one with the next version number, put its sha256 into ``WEIGHTS_SHA256``
next to the model, and rebuild the committed leaderboard (benchmarks/make_leaderboard.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    from tta.download import sha256_of
    from tta.models import smoke_cnn, street_seg
    from tta.models.builtin_training import state_digest
    from tta.models.checkpoint import resolve

    recipes = {"smoke_cnn": smoke_cnn.train_smoke_cnn, "street_seg": street_seg.train_street_seg}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(recipes))
    parser.add_argument("--out", required=True, type=Path, help="where to write the retrained state dict")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the shipped weights used 0)")
    args = parser.parse_args()

    started = time.perf_counter()
    state = recipes[args.name](seed=args.seed)
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    shipped_path = resolve(f"builtin:{args.name}")
    shipped = torch.load(shipped_path, map_location="cpu", weights_only=True)
    largest = max((state[k].double() - shipped[k].double()).abs().max().item() for k in shipped)
    new, old = state_digest(state), state_digest(shipped)
    print(f"{args.name}: trained in {seconds:.1f} s; wrote {args.out} ({args.out.stat().st_size:,} bytes, "
          f"sha256 {sha256_of(args.out)})")
    print(f"content digest {new} (shipped {shipped_path.name}: {old}); "
          f"{'bit-identical' if new == old else f'largest parameter difference {largest:.3g}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
