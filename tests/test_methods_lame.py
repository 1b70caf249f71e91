"""lame: the affinities and the fixed point on a hand-computed 4-point graph, the method on a real
network (split, no parameter change, stateless reset), batch size 1, refusals, a run through ``Run``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import random_resnet20
from tta.errors import UserError
from tta.methods.lame import LAME, knn_affinity, laplacian_assignment, rbf_affinity
from tta.models.split import split_classifier
from tta.runner import Run, RunConfig

#: four unit vectors: 0 = (1, 0), 1 = (0.6, 0.8), 2 = (0, 1), 3 = (-1, 0)
POINTS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
#: source probabilities of the four points over two classes
PROBS = [[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.2, 0.8]]


def test_knn_graph_of_four_points_by_hand():
    # distances: d01 = sqrt(0.8), d02 = sqrt(2), d03 = 2, d12 = sqrt(0.4), d13 = sqrt(3.2), d23 = sqrt(2)
    # nearest other point: 0 -> 1, 1 -> 2, 2 -> 1, 3 -> 2
    expected = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert knn_affinity(POINTS.float(), knn=1).tolist() == expected
    assert knn_affinity(POINTS.float(), knn=3).sum(1).tolist() == [3.0] * 4  # every other point
    assert knn_affinity(POINTS[:1].float(), knn=5).tolist() == [[0.0]]  # one point: no neighbour


def test_rbf_scale_is_the_mean_knn_th_distance_counting_the_point_itself():
    # knn = 2: the 2nd smallest distance of each row, its own 0 being the 1st: d01, d12, d21, d32
    scale = (math.sqrt(0.8) + 2 * math.sqrt(0.4) + math.sqrt(2.0)) / 4
    w = rbf_affinity(POINTS, knn=2)
    assert float(w[0, 3]) == pytest.approx(math.exp(-4.0 / (2 * scale ** 2)), rel=1e-12)
    assert float(w[1, 2]) == pytest.approx(math.exp(-0.4 / (2 * scale ** 2)), rel=1e-12)
    assert w.diagonal().tolist() == [1.0] * 4


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_lame_assignment_on_the_four_point_graph_by_hand():
    w = knn_affinity(POINTS.float(), knn=1).double()
    unary = -torch.log(torch.tensor(PROBS, dtype=torch.float64) + 1e-10)
    # start: y = softmax(log(p + 1e-10)) = (p + 1e-10) / (1 + 2e-10); one step: y_i = softmax(log(p_i + 1e-10)
    # + sum_j w_ij y_j), the neighbour of 0 and 2 being 1, of 1 and 3 being 2
    neighbour = [1, 2, 1, 2]
    start = [[(v + 1e-10) / (1 + 2e-10) for v in row] for row in PROBS]
    one_step = [_softmax([math.log(PROBS[i][k] + 1e-10) + start[neighbour[i]][k] for k in range(2)])
                for i in range(4)]
    logits, steps = laplacian_assignment(unary, w, 1.0, max_steps=1)
    assert steps == 1
    torch.testing.assert_close(logits.softmax(1), torch.tensor(one_step, dtype=torch.float64), rtol=1e-12, atol=0)
    # the converged assignment is the fixed point y_i = softmax(log p_i + sum_j w_ij y_j)
    logits, steps = laplacian_assignment(unary, w, 1.0, max_steps=100)
    y = logits.softmax(1).tolist()
    assert 3 <= steps < 100
    for i in range(4):
        assert y[i] == pytest.approx(_softmax([math.log(PROBS[i][k] + 1e-10) + y[neighbour[i]][k]
                                               for k in range(2)]), abs=1e-6)
    # point 1 (0.55 for class 0) follows its neighbour 2 to class 1; the others keep their class
    assert [max(range(2), key=lambda k: row[k]) for row in y] == [0, 1, 1, 1]
    # no steps: the source assignment (log p + 1e-10 as logits)
    logits, steps = laplacian_assignment(unary, w, 1.0, max_steps=0)
    assert steps == 0 and torch.equal(logits, -unary)


def _setup(**hp):
    method = LAME(**hp)
    method.setup(random_resnet20(0).eval())
    return method


def _batch(size=16, seed=1):
    return torch.rand(size, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("affinity", ["rbf", "knn", "linear"])
def test_forward_is_the_assignment_on_the_split_and_changes_no_tensor(affinity):
    method = _setup(affinity=affinity, force_symmetry=affinity == "knn")
    probe = copy.deepcopy(method.model)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    x = _batch()
    with torch.inference_mode():
        out = method(x)
        features, classifier = split_classifier(probe)
        z = features(x)
        unary = -torch.log(classifier(z).softmax(1) + 1e-10)
        w = {"rbf": rbf_affinity, "knn": knn_affinity, "linear": lambda f, k: f @ f.t()}[affinity](
            F.normalize(z, dim=-1), 5)
        if affinity == "knn":
            w = (w + w.t()) / 2
        expected, _ = laplacian_assignment(unary, w, 1.0, 100)
    assert torch.equal(out, expected)
    assert not torch.equal(out.softmax(1), classifier(z).softmax(1))  # the graph moved the assignment
    assert all(torch.equal(v, before[k]) for k, v in method.model.state_dict().items())


def test_reset_is_exact_and_there_is_no_state():
    method = _setup()
    assert method.touched_tensors() == [] and not method.diverged()
    with torch.inference_mode():
        first = [method(_batch(seed=s)) for s in range(3)]
        method.reset()
        again = [method(_batch(seed=s)) for s in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not method.diverged()  # nothing to diverge: LAME keeps no state and changes no parameter


def test_batch_of_one_returns_the_model_logits():
    method = _setup()
    x = _batch(size=1)
    with torch.inference_mode():
        assert torch.equal(method(x), method.model(x))


def test_refusals_are_one_line():
    with pytest.raises(UserError, match="^method 'lame': unknown affinity 'cosine'"):
        LAME(affinity="cosine")
    with pytest.raises(UserError, match="^method 'lame' needs a feature extractor / classifier split") as info:
        LAME().setup(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
    assert "\n" not in str(info.value)


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="lame", n_examples=400, domains=["fog", "gaussian_noise"])
               ).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
