"""tta: a benchmark suite for test-time adaptation (TTA) and domain generalization (DG).

The data flow is one straight line (see README.md):

    Protocol --Batch(x, y, domain, index)--> Method.forward(x) -> logits
        -> metric accumulators -> RunResult rows -> ResultStore -> leaderboard
"""

__version__ = "0.1.0"
