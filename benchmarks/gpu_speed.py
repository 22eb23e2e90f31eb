"""Training speed on a GPU, all in one process on the same device, for ResNet-20 (batch 128,
CIFAR-10) and LeNet-300-100 (batch 60, MNIST):

  (a) a conventional loop as open_lth feeds data: uint8 arrays -> PIL -> transforms ->
      DataLoader (0 and 8 workers), written without torchvision as train_speed.py does;
  (b) this trainer, eager (--cuda_graphs=off);
  (c) with CUDA graphs (the default on CUDA);
  (d) with graphs and bf16;
  (e) with graphs and torch.compile (only with --compile).

It prints the training loop's iterations per second by the trainer's own clock (its
wall_seconds metric, between two evaluations, so without evaluations, checkpoints, the
warm-up and the capture), the ratios, the whole-process time of `main.py train` at its
defaults, and the figures behind the full-size instability analysis estimate.

    python benchmarks/gpu_speed.py --dataset_root=<folder laid out like ../shared/data>
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import PilMnist  # noqa: E402

from open_lth.foundations import registries  # noqa: E402
from open_lth.foundations.hparams import DatasetHparams, ModelHparams  # noqa: E402
from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.training.data import DeviceData, load  # noqa: E402
from open_lth.training.evaluation import evaluate_copies  # noqa: E402
from open_lth.training.loop import Loop  # noqa: E402
from open_lth.training.metrics import read_rows  # noqa: E402
from open_lth.training.stacked import stack  # noqa: E402
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PilCifar(torch.utils.data.Dataset):
    """open_lth's CIFAR-10 pipeline: RandomHorizontalFlip, RandomCrop(32, padding=4),
    ToTensor, Normalize, each re-implemented with PIL and torch operations."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, ImageOps

        pic = Image.fromarray(self.images[i], mode="RGB")
        if random.random() < 0.5:
            pic = pic.transpose(Image.FLIP_LEFT_RIGHT)
        pic = ImageOps.expand(pic, border=4, fill=0)
        top, left = random.randint(0, 8), random.randint(0, 8)
        pic = pic.crop((left, top, left + 32, top + 32))
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], 3).permute(2, 0, 1).contiguous()
        img = img.to(dtype=torch.float32).div(255)
        mean = torch.as_tensor(CIFAR_MEAN).view(-1, 1, 1)
        std = torch.as_tensor(CIFAR_STD).view(-1, 1, 1)
        return img.sub_(mean).div_(std), self.labels[i]


def sync_time() -> float:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def kernel_profile(step: object, label: str, top: int) -> None:
    """Print the CUDA kernels of one call of `step` (the mean of 10, after 5 to warm up):
    how many, their total GPU time, and the `top` costliest."""
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = sum(e.count for e in events) / 10
    total = sum(e.self_device_time_total for e in events) / 10 / 1000
    print(f"{label}: {kernels:.0f} kernels, {total:.2f} ms of kernel time per step")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        per = e.self_device_time_total / 10 / 1000
        print(f"  {per:6.3f} ms  {e.count / 10:5.1f}x  {e.key[:90]}")


def timed(fn: object, n: int) -> float:
    """Calls of `fn` per second over n calls, after 10 to warm up."""
    for _ in range(10):
        fn()
    start = sync_time()
    for _ in range(n):
        fn()
    return n / (sync_time() - start)


def conventional_its(spec: dict, workers: int, steps: int, device: torch.device) -> float:
    """open_lth's loop: a DataLoader over PIL images, batches moved to the GPU, plain SGD or
    Adam (open_lth's defaults), no channels_last, no graphs."""
    train = spec["train"]
    dataset_type = PilCifar if spec["dataset"] == "cifar10" else PilMnist
    dataset = dataset_type(train.images.cpu(), train.labels.cpu())
    model = build_model(spec["model_hp"], 10, seed=1).to(device)
    training = spec["training"]
    if training.optimizer_name == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=training.lr, momentum=training.momentum or 0.0
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=spec["batch"], shuffle=True, num_workers=workers, drop_last=True
    )
    warmup, done, start = 5, 0, 0.0
    while done < steps + warmup:
        for x, y in loader:  # a new pass (and new workers) per epoch, as open_lth does
            if done == warmup:
                start = sync_time()
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps + warmup:
                break
    return steps / (sync_time() - start)


def trainer_its(
    spec: dict,
    steps: int,
    graphs: str,
    *,
    bf16: bool = False,
    compile: bool = False,
    k: int = 1,
    fp16: bool = False,
    pack_streams: int = 1,
) -> float:
    """The trainer's own clock between its evaluations at steps/2 and steps: iterations
    (of all K copies together) per second, in steady state. The options are keywords: a
    new one inserted among positional ones once turned pack_speed's lanes into --fp16."""
    fields = {**spec["training"].to_dict(), "training_steps": f"{steps}it"}
    precision = {"bf16": bf16, "fp16": fp16, "compile": compile}
    training = type(spec["training"])(**{**fields, **precision})
    device = spec["train"].device
    models = [build_model(spec["model_hp"], 10, seed=i).to(device) for i in range(k)]
    options = TrainOptions(
        f"{steps // 2}it", f"{steps}it", quiet=True, cuda_graphs=graphs, pack_streams=pack_streams
    )
    with tempfile.TemporaryDirectory() as tmp:
        copies = [Copy(Path(tmp) / f"c{i}", Seeds(i, i)) for i in range(k)]
        data = (spec["train"], spec["test"])
        # Lanes are a pack's (independent runs, a checkpoint each); one job stays stacked.
        shared = None if pack_streams > 1 else Path(tmp) / "ck"
        Loop(models, Stage(training, *data, spec["batch"], copies, options, shared)).run()
        rows = read_rows(copies[0].out / "metrics.csv")
        wall = {it: v for it, name, v in rows if name == "wall_seconds"}
    return (steps - steps // 2) / (wall[steps] - wall[steps // 2])


def process_seconds(model: str, dataset_root: Path, device: str) -> float:
    """`main.py train` at the model's defaults, start to exit (imports, data, evaluations)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            sys.executable,
            "main.py",
            "train",
            f"--default_hparams={model}",
            f"--dataset_root={dataset_root}",
            f"--root={tmp}",
            f"--device={device}",
            "--quiet",
        ]
        start = time.perf_counter()
        subprocess.run(argv, cwd=Path(__file__).resolve().parents[1], check=True)
        return time.perf_counter() - start


def tiled(data: DeviceData, n: int) -> DeviceData:
    """The split repeated to n examples: real images at a full-size split's length."""
    reps = -(-n // len(data))
    out = DeviceData(
        data.images.repeat(reps, 1, 1, 1)[:n],
        data.labels.repeat(reps)[:n],
        (0.0,),
        (1.0,),
        None,
        data.pad,
        data.device,
    )
    out._scale, out._shift = data._scale, data._shift
    return out


def eval_seconds(spec: dict, data: DeviceData, k: int) -> float:
    """One evaluation of K stacked ResNet-20 copies over `data` (median of 3)."""
    models = [build_model(spec["model_hp"], 10, seed=i) for i in range(k)]
    net = (models[0] if k == 1 else stack(models)).to(data.device)
    net = net.to(memory_format=torch.channels_last)
    evaluate_copies(net, data, k)
    times = []
    for _ in range(3):
        start = sync_time()
        evaluate_copies(net, data, k)
        times.append(sync_time() - start)
    return sorted(times)[1]


def load_spec(model: str, root: Path, device: torch.device) -> dict:
    defaults = registries.models.get(model).default_hparams(model)
    batch = defaults.dataset.batch_size
    hp = DatasetHparams(defaults.dataset.dataset_name, batch)
    return {
        "dataset": defaults.dataset.dataset_name,
        "batch": batch,
        "training": defaults.training,
        "model_hp": ModelHparams(model, defaults.model.model_init, defaults.model.batchnorm_init),
        "train": load(hp, root, True, device)[0],
        "test": load(hp, root, False, device)[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[2] / "shared/data"
    parser.add_argument("--dataset_root", default=str(default_root), help="MNIST folder root")
    parser.add_argument("--cifar_root", help="default: <dataset_root>/cifar10-subset")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true", help="also graphs + torch.compile")
    parser.add_argument("--skip_conventional", action="store_true")
    parser.add_argument("--skip_process", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="x steps (a CPU smoke test)")
    args = parser.parse_args()
    from open_lth.main import load_plugins

    load_plugins()
    device = torch.device(args.device)
    mnist_root = Path(args.dataset_root)
    cifar_root = Path(args.cifar_root or mnist_root / "cifar10-subset")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}")

    rates: dict[tuple[str, str], float] = {}
    plan = [
        ("cifar_resnet_20", cifar_root, 1000, 200),
        ("mnist_lenet_300_100", mnist_root, 4000, 400),
    ]
    for model, root, steps, conventional_steps in plan:
        steps, conventional_steps = (
            max(10, int(n * args.scale)) for n in (steps, conventional_steps)
        )
        spec = load_spec(model, root, device)
        trainer_its(spec, 100, "auto")  # warm-up: lazy initialization, cuDNN, allocator
        if not args.skip_conventional:
            for workers in (0, 8):
                rate = conventional_its(spec, workers, conventional_steps, device)
                rates[model, f"(a) conventional, {workers} workers"] = rate
        rates[model, "(b) trainer, eager"] = trainer_its(spec, steps, "off")
        rates[model, "(c) trainer, CUDA graphs"] = trainer_its(spec, steps, "auto")
        rates[model, "(d) graphs + bf16"] = trainer_its(spec, steps, "auto", bf16=True)
        # fp16 with its loss scaler: what a GPU without bfloat16 (Colab's T4) would run
        rates[model, "(d') graphs + fp16"] = trainer_its(spec, steps, "auto", fp16=True)
        if args.compile:
            try:
                rate = trainer_its(spec, steps, "auto", compile=True)
                rates[model, "(e) graphs + torch.compile"] = rate
            except Exception as e:  # report and go on: the other figures stand
                print(f"{model}: graphs + compile failed: {str(e).splitlines()[0]}")
        for key, rate in rates.items():
            if key[0] == model:
                print(f"{model:22s} {key[1]:32s} {rate:9.1f} it/s", flush=True)
        if model == "cifar_resnet_20":
            instability_estimate(spec, rates, max(10, int(1000 * args.scale)))

    print("\n| variant | ResNet-20, batch 128 | LeNet-300-100, batch 60 |\n|---|---|---|")
    variants = list(dict.fromkeys(v for _, v in rates))
    for v in variants:
        r, le = rates.get(("cifar_resnet_20", v)), rates.get(("mnist_lenet_300_100", v))
        print(f"| {v} | {r or float('nan'):.0f} | {le or float('nan'):.0f} |")
    base = "(a) conventional, 0 workers"
    for model in ("cifar_resnet_20", "mnist_lenet_300_100"):
        graphs = rates[model, "(c) trainer, CUDA graphs"]
        eager = rates[model, "(b) trainer, eager"]
        line = f"{model}: graphs / eager {graphs / eager:.2f}x"
        if (model, base) in rates:
            line += f", graphs / conventional (0 workers) {graphs / rates[model, base]:.2f}x"
        print(line)
    if not args.skip_process:
        for model, root in (("cifar_resnet_20", cifar_root), ("mnist_lenet_300_100", mnist_root)):
            seconds = process_seconds(model, root, args.device)
            print(f"main.py train --default_hparams={model} (its defaults): {seconds:.1f} s")


def instability_estimate(spec: dict, rates: dict, steps: int) -> None:
    """The full-size ResNet-20 instability analysis from measured rates: two copies of
    30,000 iterations trained stacked, an evaluation of both on 10,000 test images every
    epoch (391 iterations at 50,000 images), then 30 interpolation points evaluated ten at
    a time on 50,000 training and 10,000 test images."""
    pair = trainer_its(spec, steps, "auto", k=2)
    rates["cifar_resnet_20", "(f) two stacked copies, graphs"] = pair
    test, train = tiled(spec["test"], 10_000), tiled(spec["train"], 50_000)
    eval_pair = eval_seconds(spec, test, 2)
    chunk = eval_seconds(spec, train, 10) + eval_seconds(spec, test, 10)
    evaluations = 30_000 // 391 + 2  # every epoch, the start and the end
    total = 30_000 / pair + evaluations * eval_pair + 3 * chunk
    print(
        f"instability, full size (estimate): train {30_000 / pair:.0f} s at {pair:.0f} it/s "
        f"(both copies), {evaluations} evaluations x {eval_pair:.2f} s, 3 chunks of 10 points "
        f"x {chunk:.2f} s: {total:.0f} s in all"
    )


if __name__ == "__main__":
    main()
