"""tta: a benchmark suite for test-time adaptation (TTA) and domain generalization (DG).

The data flow is one straight line (see README.md):

    Protocol --Batch(x, y, domain, index)--> Method.forward(x) -> logits
        -> metric accumulators -> RunResult rows -> ResultStore -> leaderboard
"""

import time as _time

__version__ = "0.1.0"

#: ``perf_counter`` when the package was first imported (``python -m tta.run`` imports it first):
#: the origin of the time to first batch that ``tta.run --verbose`` prints
STARTED = _time.perf_counter()
