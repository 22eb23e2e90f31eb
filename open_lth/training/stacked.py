"""K copies of a network as one network, so that two SGD-noise copies train (and 30
interpolated networks evaluate) in one pass instead of K.

The copies sit side by side along the channel axis: an activation of shape
(B, C, H, W) becomes (B, K·C, H, W), copy k owning channels [k·C, (k+1)·C).
- Conv2d(C_in, C_out) becomes Conv2d(K·C_in, K·C_out, groups=K): copy k's filters
  see only copy k's channels.
- BatchNorm(C) becomes BatchNorm(K·C): statistics are per channel, hence per copy.
- Linear(in, out) becomes a batched matmul over (K, out, in) weights, reading
  (N, K·in) features copy by copy.
- ReLU, pooling, residual sums and flatten act per channel and need no change.
So the model's own forward code runs unchanged, and element-wise optimizers (SGD,
Adam) update each copy exactly as they would alone. Models made of other layers
are refused."""

from __future__ import annotations

import copy

import torch
from torch import nn

Stackable = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


class StackedLinear(nn.Module):
    def __init__(self, k: int, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(k, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.device.type == "cpu":
            # On a CPU one plain matmul per copy, reading its columns in place (BLAS takes
            # the row stride): bmm there needs both operands copied into (K, N, in)
            # layout first and ran a pack of three LeNets 30% slower than alone.
            # unbind, not indexing: its backward is one stack, not K zero-filled copies.
            xs = x.reshape(-1, self.k, self.in_features).unbind(1)
            bias = [None] * self.k if self.bias is None else self.bias.unbind(0)
            ws = self.weight.unbind(0)
            y = [nn.functional.linear(a, w, b) for a, w, b in zip(xs, ws, bias, strict=True)]
            return torch.stack(y, dim=1).reshape(*lead, self.k * self.out_features)
        x = x.reshape(-1, self.k, self.in_features).transpose(0, 1)  # (K, N, in)
        if self.bias is None:
            y = torch.bmm(x, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(*lead, self.k * self.out_features)


def _stacked_module(module: nn.Module, k: int) -> nn.Module:
    if isinstance(module, nn.Linear):
        return StackedLinear(k, module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ValueError("only plain convolutions (groups=1, zero padding) can be stacked")
        return nn.Conv2d(
            k * module.in_channels,
            k * module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups=k,
            bias=module.bias is not None,
        )
    norm = type(module)(k * module.num_features, module.eps, module.momentum, module.affine)
    return norm


def _check(model: nn.Module) -> None:
    for name, module in model.named_modules():
        has_own = any(True for _ in module.parameters(recurse=False))
        if has_own and not isinstance(module, Stackable):
            raise ValueError(f"cannot stack copies of {name} ({type(module).__name__})")


def stack(models: list[nn.Module], lanes: int = 1) -> nn.Module:
    """One network holding `models` (same architecture) as copies 0..K-1; with `lanes`
    > 1, as that many networks side by side (Lanes), each holding K/lanes copies."""
    if lanes > 1:
        per = len(models) // lanes
        groups = [models[i * per : (i + 1) * per] for i in range(lanes)]
        return Lanes([g[0] if per == 1 else stack(g) for g in groups])
    _check(models[0])
    k = len(models)
    stacked = copy.deepcopy(models[0])
    for name, module in list(stacked.named_modules()):
        if isinstance(module, Stackable):
            parent_name, _, child = name.rpartition(".")
            parent = stacked.get_submodule(parent_name) if parent_name else stacked
            setattr(parent, child, _stacked_module(module, k))
    stacked.load_state_dict(stack_state([m.state_dict() for m in models], stacked))
    stacked.copies = k
    return stacked


class Lanes(nn.Module):
    """K copies as L networks side by side (lanes), each a stack of K/L copies (or one
    network when K/L = 1): lane l holds copies l·K/L .. (l+1)·K/L - 1, reading its
    channels of the (N, K·C, ...) batch and writing its columns of the output. The
    training step runs each lane's forward and backward on its own CUDA stream, so that a
    CUDA graph holds L independent branches that the GPU may run side by side
    (open_lth.training.train_step); this forward, used to evaluate, runs them in turn."""

    def __init__(self, lanes: list[nn.Module]) -> None:
        super().__init__()
        self.lanes = nn.ModuleList(lanes)
        self.per_lane = getattr(lanes[0], "copies", 1)
        self.copies = self.per_lane * len(lanes)
        self.is_convolutional = getattr(lanes[0], "is_convolutional", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(len(self.lanes), dim=1)
        return torch.cat([lane(c) for lane, c in zip(self.lanes, chunks, strict=True)], 1)

    def groups(self, values: list) -> list[list]:
        """Per-copy values cut into the lanes' groups."""
        p = self.per_lane
        return [values[i * p : (i + 1) * p] for i in range(len(self.lanes))]


def _lane_states(state: dict, lanes: Lanes) -> list[dict]:
    """A Lanes state dict cut into its lanes' own (names without the lane prefix)."""
    out: list[dict] = [{} for _ in lanes.lanes]
    for name, value in state.items():
        _, lane, rest = name.split(".", 2)  # lanes.<l>.<name>
        out[int(lane)][rest] = value
    return out


def _is_batched_matmul(stacked: nn.Module, name: str) -> bool:
    owner = name.rpartition(".")[0]
    return isinstance(stacked.get_submodule(owner) if owner else stacked, StackedLinear)


def stack_state(states: list[dict[str, torch.Tensor]], stacked: nn.Module) -> dict:
    """Per-copy tensors (state dicts, masks) laid out as `stacked` holds them."""
    if isinstance(stacked, Lanes):
        out = {}
        for i, (lane, group) in enumerate(zip(stacked.lanes, stacked.groups(states), strict=True)):
            one = group[0] if len(group) == 1 else stack_state(group, lane)
            out.update({f"lanes.{i}.{name}": value for name, value in one.items()})
        return out
    out = {}
    for name in states[0]:
        values = [s[name] for s in states]
        if values[0].ndim == 0:  # num_batches_tracked: the copies step together
            out[name] = values[0]
        elif _is_batched_matmul(stacked, name):
            out[name] = torch.stack(values)
        else:
            out[name] = torch.cat(values)
    return out


def unstack_state(state: dict[str, torch.Tensor], stacked: nn.Module) -> list[dict]:
    """The inverse of `stack_state`: one dict per copy."""
    if isinstance(stacked, Lanes):
        copies = []
        for lane, one in zip(stacked.lanes, _lane_states(state, stacked), strict=True):
            if stacked.per_lane == 1:
                copies.append({name: value.clone() for name, value in one.items()})
            else:
                copies += unstack_state(one, lane)
        return copies
    k = stacked.copies
    copies: list[dict] = [{} for _ in range(k)]
    for name, value in state.items():
        if value.ndim == 0:
            parts = [value.clone() for _ in range(k)]
        elif _is_batched_matmul(stacked, name):
            parts = list(value.unbind(0))
        else:
            parts = list(value.chunk(k))
        for c, part in zip(copies, parts, strict=True):
            c[name] = part.clone()
    return copies


def repeat_input(x: torch.Tensor, k: int) -> torch.Tensor:
    """The same batch for each of K copies: (N, C, ...) -> (N, K·C, ...)."""
    return x if k == 1 else x.repeat(1, k, *([1] * (x.ndim - 2)))


def split_output(output: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K·classes) -> (N, K, classes)."""
    return output.view(output.shape[0], k, -1)


def _stack_values(values: list, batched: bool) -> object:
    first = values[0]
    if not isinstance(first, torch.Tensor) or first.ndim == 0:
        return first  # a step count: the copies step together
    return torch.stack(values) if batched else torch.cat(values)


def stack_optimizer_state(states: list[dict], stacked: nn.Module) -> dict:
    """K optimizers' state dicts (SGD momentum, Adam moments and step), each of a copy
    alone, as the optimizer of `stacked` holds them: parameter i of a copy is
    parameter i of the stacked network, laid out as `stack_state` lays out weights."""
    if isinstance(stacked, Lanes):
        merged: dict = {}
        offset = 0
        for lane, group in zip(stacked.lanes, stacked.groups(states), strict=True):
            one = group[0] if len(group) == 1 else stack_optimizer_state(group, lane)
            merged.update({offset + i: entry for i, entry in one["state"].items()})
            offset += len(list(lane.parameters()))
        groups = copy.deepcopy(states[0]["param_groups"])
        groups[0]["params"] = list(range(offset))  # one group over every lane's parameters
        return {"state": merged, "param_groups": groups}
    names = [n for n, _ in stacked.named_parameters()]
    merged = {}
    for index, entry in states[0]["state"].items():
        batched = _is_batched_matmul(stacked, names[index])
        try:
            entries = [s["state"][index] for s in states]
        except KeyError:
            raise ValueError(f"the copies' optimizer states differ for {names[index]}") from None
        merged[index] = {key: _stack_values([e[key] for e in entries], batched) for key in entry}
    return {"state": merged, "param_groups": copy.deepcopy(states[0]["param_groups"])}


def unstack_optimizer_state(state: dict, stacked: nn.Module) -> list[dict]:
    """The inverse of `stack_optimizer_state`: one optimizer state dict per copy, each
    as the copy's optimizer alone would save it."""
    if isinstance(stacked, Lanes):
        copies = []
        offset = 0
        for lane in stacked.lanes:
            count = len(list(lane.parameters()))
            groups = copy.deepcopy(state["param_groups"])
            groups[0]["params"] = list(range(count))
            entries = state["state"].items()
            one = {
                "state": {i - offset: e for i, e in entries if offset <= i < offset + count},
                "param_groups": groups,
            }
            offset += count
            copies += [one] if stacked.per_lane == 1 else unstack_optimizer_state(one, lane)
        return copies
    k = stacked.copies
    names = [n for n, _ in stacked.named_parameters()]
    copies: list[dict] = [
        {"state": {}, "param_groups": copy.deepcopy(state["param_groups"])} for _ in range(k)
    ]
    for index, entry in state["state"].items():
        batched = _is_batched_matmul(stacked, names[index])
        for c in copies:
            c["state"][index] = {}
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                parts = [value.clone() if isinstance(value, torch.Tensor) else value] * k
            else:
                parts = [p.clone() for p in (value.unbind(0) if batched else value.chunk(k))]
            for c, part in zip(copies, parts, strict=True):
                c["state"][index][key] = part
    return copies
