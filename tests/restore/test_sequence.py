"""SampleSeq through reduction: merged positions count the original tokens across stages (DESIGN §2 step 3)."""

import torch

from restore.sequence import SampleSeq, Span
from restore.tokens import Assignment


def _seq() -> SampleSeq:
    # text, six visual tokens, text; axis 0 runs 10..15 over the image, axis 1 runs down 5..0.
    pos = torch.tensor([[0, 9], [10, 5], [11, 4], [12, 3], [13, 2], [14, 1], [15, 0], [16, 6]])
    return SampleSeq.full(torch.randn(8, 4), pos, [Span(1, 7, grid=None)])


def test_a_token_merged_twice_takes_the_lower_median_of_its_original_members():
    seq = _seq()
    stage1 = seq.reduce([Assignment(slot=torch.tensor([0, 0, 0, 1, 2, 2]), rep=torch.tensor([0, 3, 4]))], "median")
    # {10,11,12} -> 11, {13} -> 13, {14,15} -> 14 (lower median); axis 1: {5,4,3} -> 4, {2}, {1,0} -> 0.
    assert stage1.positions[1:4].tolist() == [[11, 4], [13, 2], [14, 0]]
    assert stage1.sizes[1:4].tolist() == [3, 1, 2]
    stage2 = stage1.reduce([Assignment(slot=torch.tensor([0, 1, 0]), rep=torch.tensor([0, 1]))], "median")
    # Slot 0 stands for the originals {10,11,12,14,15} / {5,4,3,1,0}: lower medians 12 and 3, not the
    # median of the stage-1 positions {11,14} / {4,0} (11 and 0).
    assert stage2.positions[1:3].tolist() == [[12, 3], [13, 2]]
    assert stage2.sizes[1:3].tolist() == [5, 1]
    assert stage2.positions[[0, 3]].tolist() == [[0, 9], [16, 6]]  # text keeps its positions
    assert stage2.next_position.tolist() == [17, 17]


def test_dropped_originals_do_not_count_and_compact_renumbers():
    seq = _seq()
    pruned = seq.reduce([Assignment(slot=torch.tensor([0, -1, 1, 1, -1, 2]), rep=torch.tensor([0, 2, 5]))], "median")
    merged = pruned.reduce([Assignment(slot=torch.tensor([0, 0, 1]), rep=torch.tensor([0, 2]))], "median")
    assert merged.positions[1:3, 0].tolist() == [12, 15]  # originals {10,12,13}; {15}
    compact = seq.reduce([Assignment.keep(torch.tensor([1, 4]), 6)], "compact")
    assert compact.positions[:, 0].tolist() == [0, 1, 2, 3] and compact.next_position.tolist() == [4, 4]
