"""Images/s of the in-memory batched pipeline (benchmarks.data.batches) versus a per-image torchvision DataLoader.

Both read the same random uint8 CIFAR-shaped images and produce normalized, randomly cropped (padding 4) and flipped
float batches of 128. The in-memory side crops and flips whole batches with one gather; the DataLoader side runs the
usual per-image transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) on PIL images, as
torchvision's CIFAR10 dataset does, in `--workers` worker processes (persistent, so steady-state epochs pay no
start-up; the first epoch, start-up included, is reported too).

    python -m benchmarks.perf.data_path [--out DIR] [--quick] [--images N] [--workers W] [--epochs E]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from benchmarks.data import CIFAR10_MEAN, CIFAR10_STD, batches
from benchmarks.perf import common

NAME = "data_path"
TARGET = 5.0  # in-memory images/s over DataLoader images/s, from the Performance issue


class PerImageDataset(torch.utils.data.Dataset):
    """HWC uint8 images decoded to PIL per item and transformed one at a time (torchvision's CIFAR10 way)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def per_image_transform() -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])


def epoch_seconds(make_iter, epochs: int) -> list[float]:
    """Wall seconds of each full pass over a fresh iterator from `make_iter()`."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in make_iter():
            pass
        times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # the pipeline's (N, C, H, W) uint8 layout
    y = torch.from_numpy(labels).long()
    generator = torch.Generator().manual_seed(0)

    def in_memory():
        return batches(x, y, args.batch, mean=CIFAR10_MEAN, std=CIFAR10_STD, augment=True, shuffle=True,
                       generator=generator)

    loader = DataLoader(PerImageDataset(images, labels, per_image_transform()), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    pipelines = {"in-memory batches()": in_memory, f"DataLoader, {args.workers} workers": lambda: loader}
    rows = []
    for name, make_iter in pipelines.items():
        times = epoch_seconds(make_iter, args.epochs)
        steady = times[1:] or times  # the first epoch pays warm-up (worker start-up for the DataLoader)
        rows.append({"pipeline": name, "images": args.images, "batch": args.batch,
                     "first_epoch_s": times[0], "epoch_s": common.median(steady),
                     "images_per_s": args.images / common.median(steady),
                     "first_epoch_images_per_s": args.images / times[0]})
    speedup = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    settings = {"quick": args.quick, "images": args.images, "batch": args.batch, "workers": args.workers,
                "epochs": args.epochs, "torch_threads": torch.get_num_threads()}
    return common.result(NAME, settings, rows, speedup=speedup, target=TARGET, met=speedup >= TARGET)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = [[r["pipeline"], f"{r['images_per_s']:,.0f}", f"{r['first_epoch_images_per_s']:,.0f}",
             common.fmt(r["epoch_s"], 3)] for r in result["rows"]]
    head = (f"### Data path ({s['images']:,} random uint8 3x32x32 images, batch {s['batch']}, crop+flip+normalize; "
            f"median of {max(s['epochs'] - 1, 1)} epoch(s) after a warm-up epoch)\n\n")
    verdict = "met" if result["met"] else "MISSED"
    tail = f"\n\nin-memory / DataLoader: **{result['speedup']:.1f}x** (target ≥ {result['target']:.0f}x, {verdict})."
    return head + common.table(["pipeline", "images/s", "images/s, first epoch", "s/epoch"], rows) + tail


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="number of images (default 10000; 512 with --quick)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="passes per pipeline, the first a warm-up (default 3)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.setup(build_parser().parse_args(argv))
    args.images = args.images or (512 if args.quick else 10_000)
    args.epochs = args.epochs or (2 if args.quick else 3)
    return common.finish(NAME, run(args), args.out, markdown)


if __name__ == "__main__":
    main()
