"""Would K runs go faster as several networks on their own CUDA streams than stacked into one?

A pack stacks K copies into one network (grouped convolutions, batched matmuls); for
ResNet-20 cuDNN's grouped convolutions cost close to K times one copy's, which caps 8
packed runs at 2.25x. `--pack_streams=G` trains the K runs as G networks side by side
(open_lth.training.stacked.Lanes, each a stack of K/G copies) whose forward and backward
run on G streams, so that the step's CUDA graph holds G independent branches the GPU may
run side by side. This probe replays the step's graph on a fixed batch (no batch drawn,
no loop around the replay) and prints run-iterations per second for one network, the
stacked pack, and G = 2, 4, ..., K lanes.

    python benchmarks/streams_probe.py --dataset_root=<folder laid out like ../shared/data> \\
        --model=cifar_resnet_20 --k=8

`--device=cpu` steps every variant eagerly a few times: a smoke test of this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_speed  # noqa: E402
from pack_probe import parts_for, probe_setup  # noqa: E402

from open_lth.training.train_step import StaticStep  # noqa: E402


def main() -> None:
    args, device, spec = probe_setup(__doc__, "cifar_resnet_20", 8, 300)
    cuda = device.type == "cuda"
    k, batch = args.k, spec["batch"]
    steps = args.steps if cuda else 2
    name = torch.cuda.get_device_name(device) if cuda else "CPU (smoke test)"
    print(f"{name}: {args.model}, K={k}, batch {batch}, graph replay on a fixed batch")

    train = spec["train"]
    index = torch.stack([train.order(seed, 0)[:batch] for seed in range(k)])
    x, y = train.copies_batch(index)

    def rate(copies: int, lanes: int) -> float:
        """Steps a second of `copies` runs as `lanes` networks, replayed from a graph."""
        step = StaticStep(parts_for(spec, copies, device, lanes), capture=cuda)
        inputs = (x[:, : x.shape[1] * copies // k], y[:, :copies])
        for _ in range(5):  # warm-up steps, then the capture
            step(*inputs, 0.01)
        replay = step.graph.replay if cuda else lambda: step(*inputs, 0.01)
        return gpu_speed.timed(replay, steps)

    single = rate(1, 1)
    print(f"one network:             {single:9.0f} run-it/s", flush=True)
    for lanes in dict.fromkeys(g for g in (1, 2, 4, 8, 16, k) if k % g == 0 and g <= k):
        label = "stacked (one network)" if lanes == 1 else f"{lanes} lanes x {k // lanes} stacked"
        r = k * rate(k, lanes)
        print(f"{label:24s} {r:9.0f} run-it/s  {r / single:5.2f}x one network", flush=True)


if __name__ == "__main__":
    main()
