"""Benchmark: training throughput of the project's input pipeline vs the seed's, same process.

Three variants train the seed's Model 3 on the same real photos, same image size, same
batch size (16), same optimizer:

- ``seed``: what the notebook does: Keras ``ImageDataGenerator`` with the seed's augmentation
  (``tf.keras.preprocessing.image.ImageDataGenerator``), ``flow_from_directory`` on a
  temporary class-folder copy of the images, feeding ``model.fit``; float32.
- ``ours``: ``weather_tasks.data.make_dataset`` (decode + resize once, cache, seeded shuffle,
  batched parallel augmentation, prefetch); float32.
- ``ours-bf16``: the same pipeline under the ``mixed_bfloat16`` policy (output layer float32).

First, per size, the two input pipelines alone (no model): the images/s of augmented
training batches each can deliver, which is what a GPU would wait on.

The machine is shared, so the variants run *interleaved*, one epoch each in turn, rotating
the order every round: background load hits all of them alike. Throughput is images/s of
the training part of an epoch (validation excluded), in wall seconds and in CPU seconds of
this process (the fair measure when other jobs share the cores), steady state (epochs
after the first, which traces the graph and fills the decode cache); epoch 1 is shown too. Val
accuracy of every model is measured on the same val images through the same eval pipeline.
With a few epochs on a couple of hundred images this shows the models learn comparably, not
final accuracy. Optionally, the pyfunc model's prediction latency (single image, batch).

Prints numbers and ratios; asserts nothing about time.
Run: ``.venv/bin/python bench/train.py [--images 160] [--epochs 3,2] [--sizes 128,250]``
(about 15 minutes on a quiet 2-core CPU with the defaults).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from weather_tasks import config, data, recipe  # noqa: E402

MWD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mwd"
CLASSES = config.DEFAULT_CLASSES
BATCH = 16


@dataclass
class Variant:
    """One model and its input pipeline; the recipe's epoch timer follows all its fits.

    The timer's CPU seconds (all threads of this process, data loading included) are the
    fairer measure on a shared machine: they count the work done, not the time spent waiting
    for a core.
    """

    name: str
    model: keras.Model
    train: Any
    val: Any
    n_train: int
    timer: recipe.EpochTimer = field(default_factory=recipe.EpochTimer)
    val_accuracy: list[float] = field(default_factory=list)

    def steady_images_per_second(self) -> float:
        return self.timer.images_per_second(self.n_train)

    def steady_images_per_cpu_second(self) -> float:
        return self.timer.images_per_cpu_second(self.n_train)

    def first_epoch_images_per_second(self) -> float:
        return self.n_train / self.timer.train_seconds[0]


def select_images(n: int, seed: int = 123) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """n distinct JPEG photos, balanced over the classes, split 70/30 per class (seeded)."""
    images = MWD / "images"
    if not images.is_dir():
        sys.exit(f"real photos not found at {images}")
    with open(MWD / "MANIFEST.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["format"] == "JPEG"]
    rng = random.Random(seed)
    train: list[tuple[Path, str]] = []
    val: list[tuple[Path, str]] = []
    for label in CLASSES:
        distinct = {r["sha256"]: r for r in rows if r["class"] == label}
        chosen = sorted(distinct.values(), key=lambda r: r["filename"])
        rng.shuffle(chosen)
        chosen = chosen[: n // len(CLASSES)]
        cut = round(len(chosen) * 0.7)
        train += [(images / r["filename"], label) for r in chosen[:cut]]
        val += [(images / r["filename"], label) for r in chosen[cut:]]
    return train, val


def class_folders(pairs: list[tuple[Path, str]], root: Path) -> Path:
    """The seed's layout: one folder per class (what directory_clf + split-folders made)."""
    for path, label in pairs:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / label / path.name)
    return root


def seed_generators(train_dir: Path, val_dir: Path, size: int) -> tuple[Any, Any]:
    """The notebook's ImageDataGenerator setup, except target_size = the model's size."""
    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator  # noqa: N806
    train_gen = ImageDataGenerator(
        rescale=1.0 / 255,
        shear_range=0.2,
        zoom_range=0.2,
        horizontal_flip=True,
        width_shift_range=0.2,
        height_shift_range=0.2,
        rotation_range=20,
        brightness_range=[0.5, 1.5],
    ).flow_from_directory(
        str(train_dir), target_size=(size, size), batch_size=BATCH,
        class_mode="categorical", classes=list(CLASSES), shuffle=True, seed=123,
    )
    val_gen = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(val_dir), target_size=(size, size), batch_size=BATCH,
        class_mode="categorical", classes=list(CLASSES), shuffle=False,
    )
    return train_gen, val_gen


def build(policy: str, size: int) -> keras.Model:
    """The project's recipe: Model 3, seeded (same initial weights for every variant), Adam."""
    cfg = config.from_env(environ={}, model="model_3", image_size=size, seed=123,
                          learning_rate=1e-3)
    with recipe.precision_policy(policy):
        return recipe.build_and_compile(cfg)


def pipeline_only(size: int, train_pairs: list, tmp: Path, rounds: int = 3) -> None:
    """Training batches per second each input pipeline delivers with no model attached:
    what a fast accelerator would wait on. Steady state (after one pass that fills our cache)."""
    cfg = config.from_env(environ={}, image_size=size, batch_size=BATCH, seed=123)
    train_dir = class_folders(train_pairs, tmp / f"p{size}" / "train")
    seed_gen, _ = seed_generators(train_dir, train_dir, size)
    ours = data.make_dataset(train_pairs, cfg, training=True)
    for _ in ours:  # fill the decode cache, trace the map functions
        pass
    rates: dict[str, list[float]] = {"seed": [], "ours": []}
    for _ in range(rounds):  # interleaved, like the training runs
        t = time.perf_counter()
        for i in range(len(seed_gen)):
            seed_gen[i]
        rates["seed"].append(len(train_pairs) / (time.perf_counter() - t))
        t = time.perf_counter()
        for _batch in ours:
            pass
        rates["ours"].append(len(train_pairs) / (time.perf_counter() - t))
    seed_rate, ours_rate = (statistics.median(rates[k]) for k in ("seed", "ours"))
    print(f"\n== input pipeline alone at {size}px (augmented training batches, no model) ==\n"
          f"seed ImageDataGenerator {seed_rate:8.1f} img/s\n"
          f"ours tf.data            {ours_rate:8.1f} img/s\n"
          f"ratio ours / seed: {ours_rate / seed_rate:.1f}x", flush=True)


def run_size(size: int, epochs: int, train_pairs: list, val_pairs: list, tmp: Path,
             variants_wanted: list[str]) -> list[Variant]:
    cfg = config.from_env(environ={}, image_size=size, batch_size=BATCH, seed=123)
    eval_ds = data.make_dataset(val_pairs, cfg, training=False)
    variants: list[Variant] = []
    if "seed" in variants_wanted:
        train_dir = class_folders(train_pairs, tmp / f"s{size}" / "train")
        val_dir = class_folders(val_pairs, tmp / f"s{size}" / "val")
        train_gen, val_gen = seed_generators(train_dir, val_dir, size)
        variants.append(Variant("seed", build("float32", size), train_gen, val_gen,
                                len(train_pairs)))
    for name, policy in (("ours", "float32"), ("ours-bf16", "mixed_bfloat16")):
        if name in variants_wanted:
            variants.append(Variant(name, build(policy, size),
                                    data.make_dataset(train_pairs, cfg, training=True),
                                    eval_ds, len(train_pairs)))
    for epoch in range(epochs):
        order = variants[epoch % len(variants):] + variants[: epoch % len(variants)]
        for v in order:
            t0 = time.perf_counter()
            hist = v.model.fit(v.train, validation_data=v.val, epochs=epoch + 1,
                               initial_epoch=epoch, verbose=0, callbacks=[v.timer])
            v.val_accuracy.append(float(hist.history["val_accuracy"][-1]))
            seconds, cpu = v.timer.train_seconds[-1], v.timer.train_cpu_seconds[-1]
            print(f"  {size}px epoch {epoch + 1}/{epochs} {v.name:<9} "
                  f"train {seconds:6.1f}s ({v.n_train / seconds:5.1f} img/s; "
                  f"{v.n_train / cpu:5.2f} img/CPU-s)"
                  f"  val_acc {v.val_accuracy[-1]:.3f}  wall {time.perf_counter() - t0:5.1f}s",
                  flush=True)
    for v in variants:  # every model on the same val pixels
        v.val_accuracy.append(float(v.model.evaluate(eval_ds, verbose=0)[1]))
    return variants


def report(size: int, variants: list[Variant]) -> None:
    by = {v.name: v for v in variants}
    print(f"\n== Model 3 at {size}px, batch {BATCH}, {variants[0].n_train} train images ==")
    print(f"{'variant':<10} {'img/s steady':>13} {'img/CPU-s':>10} {'img/s epoch 1':>14} "
          f"{'val acc (same pipeline)':>24}")
    for v in variants:
        print(f"{v.name:<10} {v.steady_images_per_second():13.1f} "
              f"{v.steady_images_per_cpu_second():10.2f} "
              f"{v.first_epoch_images_per_second():14.1f} {v.val_accuracy[-1]:24.3f}")

    def ratios(a: str, b: str, note: str = "") -> None:
        if a in by and b in by:
            wall = by[a].steady_images_per_second() / by[b].steady_images_per_second()
            cpu = by[a].steady_images_per_cpu_second() / by[b].steady_images_per_cpu_second()
            print(f"ratio {a} / {b}: {wall:.2f}x wall, {cpu:.2f}x per CPU-second{note}")

    ratios("ours", "seed", " (target 3x)")
    ratios("ours-bf16", "seed", " (target 3x)")
    ratios("ours-bf16", "ours")


def latency(model: keras.Model, size: int, paths: list[Path], tmp: Path) -> None:
    """Log the model as the project's pyfunc to a local SQLite store and time predictions."""
    import mlflow

    from devtools.latency import measure_latency
    from weather_tasks import model_package, tracking

    cfg = config.from_env(environ={}, image_size=size,
                          mlflow_tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    tracking.configure_process(cfg)  # this script is an entry point
    mlflow.set_experiment("bench-train")
    with mlflow.start_run():
        uri = model_package.log_model(model, cfg, str(paths[0]))
    result = measure_latency(uri, paths, cfg, batch_size=32, repeats=20)
    print(f"\n== pyfunc prediction latency ({size}px model, CPU) ==\n{result.summary()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--epochs", default="3,2",
                   help="epochs per size, comma-separated (one value: all sizes)")
    p.add_argument("--sizes", default="128,250")
    p.add_argument("--variants", default="seed,ours,ours-bf16")
    p.add_argument("--no-latency", action="store_true")
    args = p.parse_args()
    train_pairs, val_pairs = select_images(args.images)
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted({f for f in ("avx512_bf16", "amx_bf16", "avx512f") if f in cpu.split()})
    print(f"{len(train_pairs)} train / {len(val_pairs)} val real photos; {os.cpu_count()} CPUs "
          f"({', '.join(flags) or 'no avx512/amx'}); load average {os.getloadavg()[0]:.1f}; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    started = time.perf_counter()
    last: dict[int, list[Variant]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        sizes = [int(s) for s in args.sizes.split(",")]
        epochs = [int(e) for e in args.epochs.split(",")]
        epochs += [epochs[-1]] * (len(sizes) - len(epochs))
        for size, n_epochs in zip(sizes, epochs, strict=False):
            pipeline_only(size, train_pairs, Path(tmp))
            if n_epochs > 0:
                last[size] = run_size(size, n_epochs, train_pairs, val_pairs, Path(tmp),
                                      args.variants.split(","))
                report(size, last[size])
        if not args.no_latency and last:
            size = max(last)
            ours = next((v for v in last[size] if v.name == "ours"), last[size][-1])
            latency(ours.model, size, [p for p, _ in val_pairs], Path(tmp))
    print(f"\ntotal {time.perf_counter() - started:.0f}s; load average now "
          f"{statistics.mean(os.getloadavg()[:1]):.1f}")


if __name__ == "__main__":
    main()
