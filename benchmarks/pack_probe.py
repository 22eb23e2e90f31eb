"""Where a pack's step spends its time: for K stacked copies of a model, the trainer's rate
(run-iterations per second), for data without augmentation also with the batch drawn
outside the graph instead of inside, the step replayed alone on a fixed batch (no batch
drawn, no Python loop around it), the batch drawing alone (`copies_batch`: K copies' examples,
augmentation and layout), the trainer's loop around a step that does nothing (the host's
own cost a step), and the kernels of one eager step with their GPU time. If the replay
alone is close to the trainer's rate, the GPU's kernels bound the pack; if it is far
above, the host (drawing batches, the loop) does.

    python benchmarks/pack_probe.py --dataset_root=<folder laid out like ../shared/data> \\
        --model=mnist_lenet_300_100 --k=16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_speed  # noqa: E402

from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.training import trainer  # noqa: E402
from open_lth.training.data import derive_seed  # noqa: E402
from open_lth.training.precision import uses_channels_last  # noqa: E402
from open_lth.training.schedule import build_optimizer  # noqa: E402
from open_lth.training.stacked import stack  # noqa: E402
from open_lth.training.train_step import EagerStep, StaticStep, StepParts  # noqa: E402


class NullStep:
    def __call__(self, x: object, y: object, lr: float) -> None:
        pass


def parts_for(spec: dict, k: int, device: torch.device, lanes: int = 1) -> StepParts:
    """K fresh copies as one stacked network (or `lanes` of them), an optimizer, sums."""
    models = [build_model(spec["model_hp"], 10, seed=i) for i in range(k)]
    net = (models[0] if k == 1 else stack(models, lanes)).to(device)
    if uses_channels_last(net, device):
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(spec["training"], list(net.parameters()))
    sums = torch.zeros(k, dtype=torch.float64, device=device)
    correct = torch.zeros(k, dtype=torch.int64, device=device)
    return StepParts(net, net, optimizer, [], k, False, sums, correct)


def probe_setup(
    doc: str, model: str, k: int, steps: int
) -> tuple[argparse.Namespace, torch.device, dict]:
    """The probes' flags (--dataset_root, --model, --k, --steps, --device), the device
    (one line and exit 1 without CUDA, unless --device=cpu: a smoke test), and the
    model's data and defaults on it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dataset_root", required=True, help="MNIST root; CIFAR-10 under it")
    parser.add_argument("--model", default=model)
    parser.add_argument("--k", type=int, default=k)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    args = parser.parse_args()
    from open_lth.main import load_plugins

    load_plugins()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"error: {Path(sys.argv[0]).name} measures CUDA graphs; --device=cpu is a smoke test"
        )
    root = Path(args.dataset_root)
    root = root / "cifar10-subset" if "cifar" in args.model else root
    return args, device, gpu_speed.load_spec(args.model, root, device)


def main() -> None:
    args, device, spec = probe_setup(__doc__, "mnist_lenet_300_100", 16, 1000)
    cuda = device.type == "cuda"
    k, batch = args.k, spec["batch"]
    train = spec["train"]
    name = torch.cuda.get_device_name(device) if cuda else "CPU (smoke test)"
    print(f"{name}: {args.model}, K={k}, batch {batch}")

    rate = k * gpu_speed.trainer_its(spec, args.steps, "auto", k=k)
    print(f"trainer (graphs):        {rate:9.0f} run-it/s  {rate / k:8.0f} steps/s", flush=True)
    if not train.augmentation:
        # The same with the batch drawn outside the graph, as before BatchesInStep.
        with mock.patch.object(trainer, "replays", lambda step: False):
            outside = k * gpu_speed.trainer_its(spec, args.steps, "auto", k=k)
        print(
            f"  batch drawn outside:   {outside:9.0f} run-it/s  {outside / k:8.0f} steps/s"
            f"  (inside / outside {rate / outside:.2f}x)",
            flush=True,
        )

    generator = torch.Generator(device) if train.augmentation else None
    orders = torch.stack([train.order(seed, 0) for seed in range(k)])
    count = [0]

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        s = count[0] % (len(train) // batch)
        count[0] += 1
        seeds = [derive_seed("augment", c, s) for c in range(k)] if generator else None
        return train.copies_batch(orders[:, s * batch : (s + 1) * batch], generator, seeds)

    drawn = gpu_speed.timed(draw, args.steps)
    print(f"batch drawing alone:     {k * drawn:9.0f} run-it/s  {drawn:8.0f} steps/s")
    # The host's own cost a step: the trainer's loop around a step that does nothing
    # (its batch still drawn, outside or inside). Near the trainer's step time: host-bound.
    for inside in (True, False) if not train.augmentation else (False,):
        with (
            mock.patch.object(trainer, "make_step", lambda *a: NullStep()),
            mock.patch.object(trainer, "replays", lambda step, inside=inside: inside),
        ):
            loop = gpu_speed.trainer_its(spec, 4 * args.steps, "auto", k=k)
        where = "inside" if inside else "outside"
        print(f"loop, null step, batch {where:7s} {1e6 / loop:6.1f} us a step (host)", flush=True)

    static = StaticStep(parts_for(spec, k, device), capture=cuda)
    x, y = draw()
    for _ in range(5):
        static(x, y, 0.01)
    replay = gpu_speed.timed(
        static.graph.replay if cuda else lambda: static(x, y, 0.01), args.steps
    )
    print(f"graph replay alone:      {k * replay:9.0f} run-it/s  {replay:8.0f} steps/s")

    if cuda:
        eager = EagerStep(parts_for(spec, k, device))
        gpu_speed.kernel_profile(lambda: eager(x, y, 0.01), "one eager step of the pack", 10)


if __name__ == "__main__":
    main()
