"""RESTORE's rectifications against hand-computable answers (DESIGN §2)."""

import math

import pytest
import torch

from restore.config import RestoreConfig
from restore.methods import get_method
from restore.rectify.anchors import distinctive_anchors, restore_assignment
from restore.rectify.calibration import RopeSpec, calibration_bias, relative_decay
from restore.rectify.positions import slot_positions
from restore.tokens import Assignment, ImageTokens


def test_distinctive_anchors_pick_density_peaks():
    # Two clusters: a big one around e0 and a small one around e1, plus a lone outlier e2.
    e = torch.eye(3)
    big = torch.stack([e[0] + 0.05 * i * e[2] for i in range(5)])
    small = torch.stack([e[1] + 0.05 * i * e[2] for i in range(3)])
    feats = torch.cat([big, small, e[2:3]])
    anchors = distinctive_anchors(feats, 2)
    # The peak of each cluster: the most central member of the big cluster, then the small one's.
    sim = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(feats, dim=1).T
    rep = sim.sum(1)
    assert anchors.tolist() == sorted([int(rep[:5].argmax()), 5 + int(rep[5:8].argmax())])


def test_distinctiveness_matches_definition():
    torch.manual_seed(0)
    feats = torch.randn(12, 6)
    x = torch.nn.functional.normalize(feats, dim=1)
    c = x @ x.T
    r = c.sum(1)
    delta = []
    for i in range(12):
        higher = [c[i, j].item() for j in range(12) if r[j] > r[i]]
        delta.append(1.0 if not higher else 1 - max(higher))
    score = r * torch.tensor(delta)
    expected = sorted(torch.argsort(score, descending=True)[:4].tolist())
    assert distinctive_anchors(feats, 4).tolist() == expected


def _tokens(n=36, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageTokens(
        features=torch.randn(n, d, generator=g), importance=torch.rand(n, generator=g), grid=(1, 6, 6)
    )


@pytest.mark.parametrize("n,gamma", [(9, 0.5), (12, 0.0), (10, 1.0), (35, 0.5)])
def test_restore_assignment_sizes_and_merge(n, gamma):
    tokens = _tokens()
    a = restore_assignment(tokens, n, get_method("random"), get_method("random").Options(), RestoreConfig(gamma=gamma))
    assert a.num_slots == n
    k = round(gamma * n)
    sizes = a.sizes()
    if n - k > 0:
        assert sizes.sum().item() == tokens.num_tokens  # nothing dropped
    else:
        assert (sizes == 1).all()
    assert (sizes >= 1).all()
    merged = a.merge(tokens.features)
    for s in range(n):
        members = a.members(s)
        assert torch.allclose(merged[s], tokens.features[members].mean(0), atol=1e-6)
    kept = get_method("random").select(tokens, k, get_method("random").Options())
    assert all(sizes[a.slot[i]] >= 1 for i in kept)
    assert a.rep.tolist() == sorted(a.rep.tolist())


def test_merge_is_size_weighted():
    a = Assignment(slot=torch.tensor([0, 0, 1]), rep=torch.tensor([0, 2]))
    x = torch.tensor([[0.0], [3.0], [5.0]])
    out = a.merge(x, weights=torch.tensor([2.0, 1.0, 4.0]))
    assert out[:, 0].tolist() == [1.0, 5.0]
    assert a.sizes(torch.tensor([2.0, 1.0, 4.0])).tolist() == [3.0, 4.0]


def test_positions_median_1d_and_mrope():
    # Slot 0 keeps token 1; slot 1 merges tokens 0, 2, 3 (positions 10, 12, 13 -> median 12);
    # slot 2 merges 4 and 5 (lower median of 14, 15 is 14).
    a = Assignment(slot=torch.tensor([1, 0, 1, 1, 2, 2]), rep=torch.tensor([1, 2, 4]))
    pos = torch.tensor([10, 11, 12, 13, 14, 15])[:, None]
    assert slot_positions(pos, a, "median")[:, 0].tolist() == [11, 12, 14]
    assert slot_positions(pos, a, "original")[:, 0].tolist() == [11, 12, 14]
    mrope = torch.tensor([[5, 3, 3], [5, 3, 4], [5, 4, 3], [5, 4, 4], [5, 5, 3], [5, 5, 9]])
    med = slot_positions(mrope, a, "median")
    assert med.tolist() == [[5, 3, 4], [5, 4, 3], [5, 5, 3]]


def _rope(sections=None):
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    return RopeSpec.sectioned(inv, sections) if sections else RopeSpec.one_d(inv)


def test_relative_decay_formula():
    rope = _rope()
    for delta in [0, 1, 7, 100]:
        expected = (2 / 8) * sum(math.cos(delta * t) for t in rope.inv_freq.tolist())
        assert relative_decay(rope, torch.tensor([[delta]])).item() == pytest.approx(expected, abs=1e-6)
    m = _rope([2, 1, 1])
    d = torch.tensor([[3, 1, 2]])
    th = m.inv_freq.tolist()
    expected = (2 / 8) * (math.cos(3 * th[0]) + math.cos(3 * th[1]) + math.cos(1 * th[2]) + math.cos(2 * th[3]))
    assert relative_decay(m, d).item() == pytest.approx(expected, abs=1e-6)
    assert relative_decay(m, torch.zeros(1, 3, dtype=torch.long)).item() == pytest.approx(1.0)


def test_calibration_bias_entry_by_entry():
    rope = _rope()
    pos = torch.tensor([[0, 1, 5, 9, 20, 21]])[..., None]
    visual = torch.tensor([[False, True, True, True, False, False]])
    sizes = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0, 1.0]])
    c = 2.0
    bias = calibration_bias(rope, pos, pos, sizes.log(), visual, torch.tensor([c]), torch.tensor([True]))
    for m in range(6):
        for j in range(6):
            if visual[0, j]:
                dd = abs(pos[0, m, 0] - pos[0, j, 0]).item()
                decay = relative_decay(rope, torch.tensor([[dd]])).item()
                expected = math.log(sizes[0, j]) + math.log(c - decay)
            else:
                expected = 0.0
            assert bias[0, m, j].item() == pytest.approx(expected, abs=1e-5)
    size_only = calibration_bias(rope, pos, pos, sizes.log(), visual, torch.tensor([c]), torch.tensor([False]))
    assert torch.allclose(size_only[0, 0], torch.where(visual[0], sizes[0].log(), 0.0))
