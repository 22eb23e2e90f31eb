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


def _old_rule(scores: list[torch.Tensor], masks: list[torch.Tensor], n: int) -> list[list[int]]:
    from open_lth.pruning.select import remove_lowest, survivors

    return [sorted(g.tolist()) for g in remove_lowest(*survivors(scores, masks), n)]


@pytest.mark.parametrize("sample", [2**18, 64, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lowest_positions_removes_the_weights_the_sort_removes(monkeypatch, dtype, sample) -> None:
    """Without the concatenated float64 copy, the same weights as the stable sort of
    every survivor: random scores, many ties, ±0.0, NaN, empty layers, n from 0 to all;
    the threshold bracketed by a sample, by a small one (often missing), or bisected."""
    from open_lth.pruning import select as select_module
    from open_lth.pruning.select import lowest_positions

    monkeypatch.setattr(select_module, "SAMPLE", sample)

    g = torch.Generator().manual_seed(0)
    for case in range(60):
        sizes = torch.randint(0, 30, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        scores, masks = [], []
        for size in sizes.tolist():
            kind = case % 4
            if kind == 0:  # continuous, both signs
                s = torch.randn(size, generator=g, dtype=dtype)
            elif kind == 1:  # a few values: many ties
                s = torch.randint(0, 3, (size,), generator=g).to(dtype)
            else:  # ties, zeros of both signs, infinities, NaN
                pool = torch.tensor(
                    [0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf")], dtype=dtype
                )
                if kind == 3:
                    pool = torch.cat(
                        [pool, torch.tensor([float("nan"), -float("nan")], dtype=dtype)]
                    )
                s = pool[torch.randint(0, len(pool), (size,), generator=g)]
            scores.append(s.reshape(-1, 1) if size % 2 == 0 else s)  # any shape
            keep = torch.rand(size, generator=g) < (0.0 if case % 7 == 0 else 0.7)
            masks.append(keep.reshape(scores[-1].shape))
        alive = sum(int(m.sum()) for m in masks)
        for n in sorted({0, alive, alive // 3, alive // 2, max(alive - 1, 0)}):
            ours = [p.tolist() for p in lowest_positions(scores, masks, n)]
            assert ours == _old_rule(scores, masks, n), (case, n)
            assert sum(len(p) for p in ours) == n


def test_lowest_positions_refuses_more_than_the_survivors() -> None:
    from open_lth.pruning.select import lowest_positions

    with pytest.raises(ValueError, match="cannot remove 3 of 2"):
        lowest_positions([torch.zeros(3)], [torch.tensor([True, False, True])], 3)
