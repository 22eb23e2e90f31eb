"""The shared selector: exact counts, deterministic ties, no revival, ignored layers."""

import pytest
import torch

from open_lth.foundations.errors import UserError
from open_lth.pruning.select import count_to_prune, select


def test_exact_counts() -> None:
    assert count_to_prune(0.2, 266200) == 53240
    assert count_to_prune(0.2, 170368) == 34074  # ⌈34073.6⌉
    assert count_to_prune(0.5, 3) == 2


def test_global_threshold_across_layers_and_ties() -> None:
    mask = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(6, dtype=torch.bool)}
    scores = {"a": torch.tensor([5.0, 1.0, 1.0, 9.0]), "b": torch.tensor([1.0, 8, 7, 6, 1, 3])}
    new = select(scores, mask, 0.3, "global", [])  # 3 of 10 go; the four 1.0s tie
    # Ties are broken by position (layer order, then index): a[1], a[2], b[0].
    assert new["a"].tolist() == [True, False, False, True]
    assert new["b"].tolist() == [False, True, True, True, True, True]


def test_never_revives_and_respects_ignore() -> None:
    mask = {"a": torch.tensor([True, False, True, True]), "fc": torch.ones(3, dtype=torch.bool)}
    scores = {"a": torch.tensor([3.0, -100.0, 2.0, 1.0]), "fc": torch.tensor([-5.0, -5, -5])}
    # open_lth's count: ⌈0.25 · 6⌉ = 2 of all survivors, fc's 3 included, removed from a.
    new = select(scores, mask, 0.25, "global", ["fc"])
    assert new["a"].tolist() == [True, False, False, False]
    assert new["fc"].all()
    assert not any((new[n] & ~mask[n]).any() for n in mask)
    # The count without the ignored layers (format 1): ⌈0.25 · 3⌉ = 1.
    old = select(scores, mask, 0.25, "global", ["fc"], count_ignored=False)
    assert old["a"].tolist() == [True, False, True, False] and old["fc"].all()


def test_a_count_beyond_the_unignored_survivors_is_a_user_error() -> None:
    mask = {"a": torch.ones(2, dtype=torch.bool), "fc": torch.ones(10, dtype=torch.bool)}
    scores = {"a": torch.zeros(2), "fc": torch.zeros(10)}
    with pytest.raises(UserError, match="removes 3, but only 2 survive outside"):
        select(scores, mask, 0.2, "global", ["fc"])


def test_layerwise_prunes_each_layer_alike() -> None:
    g = torch.Generator().manual_seed(0)
    mask = {n: torch.ones(s, dtype=torch.bool) for n, s in [("a", 100), ("b", 10)]}
    scores = {"a": torch.rand(100, generator=g), "b": torch.rand(10, generator=g) + 10}
    new = select(scores, mask, 0.2, "layerwise", [])
    assert (int(new["a"].sum()), int(new["b"].sum())) == (80, 8)
    glob = select(scores, mask, 0.2, "global", [])
    assert (int(glob["a"].sum()), int(glob["b"].sum())) == (78, 10)


def test_remove_lowest_is_exact_and_breaks_ties_by_layer_then_position() -> None:
    """The one rule that IMP, pruning at initialization and Gem-Miner's prune events share."""
    from open_lth.pruning.select import remove_lowest, survivors

    masks = [torch.tensor([True, False, True, True]), torch.ones(3, dtype=torch.bool)]
    scores = [torch.tensor([1.0, -9.0, 1.0, 4.0]), torch.tensor([1.0, 0.5, 7.0])]
    values, alive = survivors(scores, masks)
    assert values.dtype == torch.float64 and len(values) == 6  # the pruned -9 is no survivor
    gone = remove_lowest(values, alive, 3)  # 0.5, then the three 1.0s tie: a[0], a[2] first
    assert [g.tolist() for g in gone] == [[0, 2], [1]]
