"""Would K runs go faster as K independent networks on K CUDA streams than stacked into one?

A pack stacks K copies into one network (grouped convolutions, batched matmuls); for
ResNet-20 cuDNN's grouped convolutions cost close to K times one copy's, which caps 8
packed runs at 2.25x. The alternative keeps the K networks apart and captures their K
steps in one CUDA graph, each on its own stream, so the graph has K independent branches
that the GPU may run side by side. This probe measures, on a fixed batch (no batch drawn,
no loop around the replay), run-iterations per second of: one network's graph; the
stacked pack's graph; the K-stream graph; and G streams of K/G stacked copies each.

    python benchmarks/streams_probe.py --dataset_root=<folder laid out like ../shared/data> \\
        --model=cifar_resnet_20 --k=8

`--device=cpu` runs every variant eagerly a few times: a smoke test of this script.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_speed  # noqa: E402
from pack_probe import parts_for  # noqa: E402

from open_lth.training.evaluation import layout  # noqa: E402
from open_lth.training.train_step import StepParts, _body, set_capturable  # noqa: E402


class StreamsStep:
    """The steps of several networks (each a StepParts, itself one or K stacked copies),
    each on its own stream, captured in one CUDA graph with a branch per network."""

    def __init__(self, parts: list[StepParts], x: torch.Tensor, y: torch.Tensor) -> None:
        self.parts = parts
        self.capture = x.device.type == "cuda"
        # Each network reads its own columns of the K-copy batch, as a pack would.
        width = x.shape[1] // sum(p.copies for p in parts)
        starts = [sum(p.copies for p in parts[:i]) for i in range(len(parts))]
        self.inputs = [
            (
                layout(p.net, x[:, s * width : (s + p.copies) * width].contiguous()),
                y[:, s : s + p.copies].contiguous(),
            )
            for p, s in zip(parts, starts, strict=True)
        ]
        self.lr = torch.full((), 0.01, dtype=torch.float32, device=x.device)
        for p in parts:
            for group in p.optimizer.param_groups:
                group["lr"] = self.lr
            set_capturable(p.optimizer, self.capture)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _all(self, cache: bool = True) -> None:
        for p, (x, y) in zip(self.parts, self.inputs, strict=True):
            _body(p, x, y, cache)

    def warm_up(self, steps: int = 3) -> None:
        for _ in range(steps):
            for p in self.parts:
                p.optimizer.zero_grad(set_to_none=True)
            if not self.capture:
                self._all()
                continue
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "This instance was constructed with capturable")
                self._all()
            torch.cuda.current_stream().wait_stream(side)
        if self.capture:
            self._capture()

    def _capture(self) -> None:
        for p in self.parts:
            p.optimizer.zero_grad(set_to_none=True)
        streams = [torch.cuda.Stream() for _ in self.parts]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            main = torch.cuda.current_stream()
            for stream, p, (x, y) in zip(streams, self.parts, self.inputs, strict=True):
                stream.wait_stream(main)  # a branch of the graph per network
                with torch.cuda.stream(stream):
                    _body(p, x, y, cache=False)
            for stream in streams:
                main.wait_stream(stream)
        self.graph = graph

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            for p in self.parts:
                p.optimizer.zero_grad(set_to_none=True)
            self._all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_root", required=True, help="MNIST root; CIFAR-10 under it")
    parser.add_argument("--model", default="cifar_resnet_20")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    from main import load_plugins

    load_plugins()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: streams_probe.py measures CUDA graphs; --device=cpu is a smoke test")
    root = Path(args.dataset_root)
    root = root / "cifar10-subset" if "cifar" in args.model else root
    spec = gpu_speed.load_spec(args.model, root, device)
    k, batch = args.k, spec["batch"]
    steps = args.steps if device.type == "cuda" else 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    print(f"{name}: {args.model}, K={k}, batch {batch}, graph replay on a fixed batch")

    train = spec["train"]
    index = torch.stack([train.order(seed, 0)[:batch] for seed in range(k)])
    x, y = train.copies_batch(index)

    def rate(groups: int) -> float:
        """Run-iterations per second of K runs as `groups` streams of K/groups stacked."""
        parts = [parts_for(spec, k // groups, device) for _ in range(groups)]
        step = StreamsStep(parts, x, y)
        step.warm_up()
        return k * gpu_speed.timed(step, steps)

    one = StreamsStep([parts_for(spec, 1, device)], x[:, : x.shape[1] // k], y[:, :1])
    one.warm_up()
    single = gpu_speed.timed(one, steps)
    print(f"one network:            {single:9.0f} run-it/s", flush=True)
    groups = [g for g in (1, 2, 4, k) if k % g == 0 and g <= k]
    for g in dict.fromkeys(groups):
        label = "stacked (one graph)" if g == 1 else f"{g} streams x {k // g} stacked"
        r = rate(g)
        print(f"{label:23s} {r:9.0f} run-it/s  {r / single:5.2f}x one network", flush=True)


if __name__ == "__main__":
    main()
