"""Benchmark training: the model's and the loader's throughput, and learning.

1. **The shards.** All of ``shared/data/images/flowers5`` (4,317 real
   128x128 photos, five classes) written as webdataset shards in the export
   layout (``tests/train/fixture_shards.py``): per class 75% train, 5% val,
   20% test. The test photos are held out: no training step sees them.
2. **Throughput, side by side.** With the benchmark's model (the tiny one of
   ``conf/train/model/tiny.yaml`` on a CPU; ViT-B-32 in bf16 on a GPU):
   the *model* rate is forward, ClipLoss, backward and AdamW step on
   batches already in memory; the *loader* rate is the train loader alone
   (shard reading, JPEG decoding, augmentation, caption choice, tokenizing)
   with its configured loader processes, nothing else running. Both in
   samples per second; the goal is a loader at least 3x the model.
3. **Learning, measured.** ``train.trainer.fit`` trains the tiny model from
   scratch on the train split within a fixed budget (``--budget-s``, wall
   seconds of training, loaders included; the number of steps is set from
   the measured rate so that the cosine schedule ends within it, and
   Lightning's ``max_time`` stops it at the budget regardless). Then
   zero-shot top-1 on the held-out test photos, the class names as texts
   ("a photo of a daisy."); chance is 20%.

Run it as ``make bench-train`` or::

    .venv/bin/python benchmarks/bench_train.py [--budget-s S] [--out DIR]
        [--threads N] [--skip-learning]

Results go to ``DIR/bench_train.json`` and ``DIR/bench_train.md`` (default
``benchmarks/out``) and are printed. The exit status is 1 when learning
stays below twice chance (40%); a missed throughput goal is reported, not
fatal. On a GPU the same command measures ViT-B-32 in bf16 and names the GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the shard writer lives with the tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, ever

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import conf  # noqa: E402
from tests.train.fixture_shards import ranks, write_flower_shards  # noqa: E402
from train.config import EvaluateConfig, TrainConfig, read_config  # noqa: E402

IMAGES = REPO.parent / "shared" / "data" / "images" / "flowers5"
SPLITS = {"train": 0.75, "val": 0.05, "test": 0.20}
LOADER_GOAL = 3.0  # loader samples/s over the model's
CHANCE = 0.2  # five classes
LEARNING_GOAL = 2 * CHANCE
# Steps are planned for this share of the model's measured rate, since the
# loader and validation share the cores: on 2 cores the fit ran at 0.8 to 1.2
# times the model-alone rate in four 5-minute runs (other work on the machine
# varied). Lightning's max_time stops the run at the budget in any case.
PLAN_SHARE = 0.85

# The learning run: the real configs with the settings it was measured with
# (held-out top-1 was 59-61% with lr 1e-3 or 2e-3, and with 48 px images).
LEARNING = [
    "train.data.batch_size=64",
    "train.data.workers=1",  # one loader process keeps up; the other core trains
    "train.data.shuffle_buffer=2000",
    "train.data.augment.scale=[0.5,1.0]",
    "train.optim.lr=1e-3",
    "train.optim.weight_decay=0.1",
    "train.optim.warmup_steps=50",
    "train.trainer.enable_progress_bar=false",
    "train.trainer.enable_model_summary=false",
    "train.trainer.log_every_n_steps=25",
    "train.trainer.num_sanity_val_steps=0",
    "train.checkpoint.every_n_steps=100000",
    "train.resume=false",
]


def compose_train(*overrides: str) -> DictConfig:
    """The ``train`` section of conf/config.yaml, with overrides."""
    folder = Path(conf.__file__).parent
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return compose("config", overrides=list(overrides)).train


def device_settings() -> tuple[list[str], str]:
    """Overrides for the throughput model on this machine, and its name."""
    if torch.cuda.is_available():
        return (
            ["train/model=vit_b_32", "train/trainer=gpu", "train.data.batch_size=256",
             f"train.data.workers={min(8, os.cpu_count() or 1)}"],
            torch.cuda.get_device_name(0),
        )  # fmt: skip
    return (["train.data.workers=2"], "CPU")


def shards_for(out: Path) -> Path:
    """The flowers5 shards under ``out`` (written once, then reused)."""
    shards = out / "bench-train-shards"
    marker = shards / "counts.json"
    if not IMAGES.is_dir():
        raise SystemExit(f"flowers5 not found at {IMAGES}: the shared data is needed")
    if not marker.exists():
        counts = write_flower_shards(
            IMAGES, shards, splits=SPLITS, samples_per_shard=256
        )
        marker.write_text(json.dumps(counts))
    return shards


def batches_in_memory(
    config: TrainConfig, parts: Any, shards: Path, count: int
) -> list:
    from train.data import ShardDataModule

    module = ShardDataModule(config.data, shards, parts, seed=0)
    loader = iter(module.train_dataloader())
    return [next(loader) for _ in range(count)]


def model_rate(config: TrainConfig, shards: Path, steps: int) -> dict[str, Any]:
    """Training steps on in-memory batches: samples per second of the model."""
    from train.models import create
    from train.module import parameter_groups

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = create(config.model, shards.parent / "bench-model-configs")
    batches = batches_in_memory(config, parts, shards, 4)
    model = parts.model.to(device).train()
    decay, no_decay = parameter_groups(model)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=1e-4,
    )
    from open_clip import ClipLoss

    loss_fn = ClipLoss()
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )

    def step(index: int) -> None:
        images, tokens = batches[index % len(batches)]
        with autocast:
            loss = loss_fn(*model(images.to(device), tokens.to(device))[:3])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for index in range(3):  # warm-up: allocations, kernels, caches
        step(index)
    _sync(device)
    started = time.perf_counter()
    for index in range(steps):
        step(index)
    _sync(device)
    seconds = time.perf_counter() - started
    samples = steps * config.data.batch_size
    return {
        "samples": samples,
        "seconds": round(seconds, 2),
        "samples_per_s": samples / seconds,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rate(
    config: TrainConfig, shards: Path, seconds_max: float
) -> dict[str, Any]:
    """The train loader alone: samples per second after its first batch."""
    from train.data import ShardDataModule
    from train.models import create

    parts = create(config.model, shards.parent / "bench-model-configs")
    module = ShardDataModule(config.data, shards, parts, seed=0)
    started = time.perf_counter()
    loader = iter(module.train_dataloader())
    next(loader)
    first_s = time.perf_counter() - started
    samples, started = 0, time.perf_counter()
    for images, _ in loader:
        samples += len(images)
        if time.perf_counter() - started > seconds_max:
            break
    seconds = time.perf_counter() - started
    return {
        "samples": samples,
        "seconds": round(seconds, 2),
        "samples_per_s": samples / seconds,
        "first_batch_s": round(first_s, 2),
        "workers": config.data.workers,
    }


def throughput(shards: Path, steps: int, threads: int | None) -> dict[str, Any]:
    """Model and loader rates, side by side, on this machine's model."""
    overrides, device_name = device_settings()
    config = read_config(compose_train(*overrides, f"train.data.shards={shards}"))
    if threads:
        torch.set_num_threads(threads)
    model = model_rate(config, shards, steps)
    loader = loader_rate(config, shards, seconds_max=30)
    return {
        "device": device_name,
        "model": config.model.name,
        "precision": config.trainer.get("precision"),
        "batch_size": config.data.batch_size,
        "torch_threads": torch.get_num_threads(),
        "model_rate": model,
        "loader_rate": loader,
        "loader_over_model": loader["samples_per_s"] / model["samples_per_s"],
    }


def learning(
    shards: Path,
    out: Path,
    budget_s: float,
    rate: float,
    threads: int | None,
    extra: list[str],
) -> dict[str, Any]:
    """Train the tiny model from scratch within the budget; zero-shot on held-out."""
    from train.evaluate import evaluate
    from train.export import load_exported
    from train.report import write_report
    from train.trainer import fit

    batch_size = 64
    steps = max(100, int(budget_s * rate / batch_size))
    run = out / "bench-train-run"
    overrides = [
        *LEARNING,
        f"train.data.shards={shards}",
        f"train.trainer.max_steps={steps}",
        f"train.trainer.val_check_interval={max(1, steps // 2)}",
        f"+train.trainer.max_time={{seconds: {int(budget_s)}}}",
        f"train.threads={threads or 'null'}",
        *extra,
    ]
    if torch.cuda.is_available():
        # a GPU trains the tiny model faster than one loader process feeds it
        workers = min(8, os.cpu_count() or 1)
        overrides += ["train/trainer=gpu", f"train.data.workers={workers}"]
    counts = fit(compose_train(*overrides), run)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = load_exported(run / "train" / "model", str(device))
    config = EvaluateConfig(
        split="test", class_sources=["label"], templates=["a photo of a {}."],
        retrieval_split="val", max_images=None, max_pairs=None,
    )  # fmt: skip
    result = evaluate(parts, config, shards, device, ranks())
    result["step"] = counts["steps"]
    report = write_report(
        result, [result], run / "train" / "logs", run / "train" / "report"
    )
    return {
        "fit": counts,
        "planned_steps": steps,
        "evaluation": result,
        "report": str(report[0]),
    }


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        **{
            p: version(p)
            for p in ("torch", "open_clip_torch", "lightning", "webdataset")
        },
    }


def render(results: dict[str, Any]) -> str:
    """The Markdown table of the results."""
    tp = results["throughput"]
    lines = [
        f"# bench_train ({results['machine']['date']}, {tp['device']})",
        "",
        "| measure | value | goal | result |",
        "|---|--:|--:|--:|",
        f"| model: {tp['model']}, {tp['precision']}, batch {tp['batch_size']}, "
        f"{tp['torch_threads']} threads: train samples/s | "
        f"{tp['model_rate']['samples_per_s']:,.0f} |  |  |",
        f"| loader alone ({tp['loader_rate']['workers']} processes): samples/s | "
        f"{tp['loader_rate']['samples_per_s']:,.0f} |  |  |",
        f"| loader / model | {tp['loader_over_model']:.1f}x | >= {LOADER_GOAL:.0f}x | "
        f"{'PASS' if tp['loader_over_model'] >= LOADER_GOAL else 'MISS'} |",
    ]
    learned = results.get("learning")
    if learned:
        fit, ev = learned["fit"], learned["evaluation"]
        lines += [
            f"| learning: tiny model from scratch, {fit['steps']} of "
            f"{learned['planned_steps']} planned steps in {fit['seconds']:.0f} s "
            f"(budget {results['budget_s']:.0f} s) | |  |  |",
            f"| held-out zero-shot top-1 ({ev['images']} images, 5 classes) | "
            f"{ev['top1']:.1%} | >= {LEARNING_GOAL:.0%} (chance {CHANCE:.0%}) | "
            f"{'PASS' if ev['top1'] >= LEARNING_GOAL else 'MISS'} |",
            f"| held-out zero-shot top-5 | {ev['top5']:.1%} |  |  |",
        ]
        retrieval = ev.get("retrieval") or {}
        if retrieval.get("pairs"):
            lines.append(
                f"| val retrieval R@1 image->text / text->image ({retrieval['pairs']} "
                f"pairs) | {retrieval['image_to_text_R@1']:.1%} / "
                f"{retrieval['text_to_image_R@1']:.1%} |  |  |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--steps", type=int, default=20, help="timed model steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: all cores but one, left to the loader)",
    )
    parser.add_argument("--skip-learning", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more Hydra overrides for the learning run, e.g. train.optim.lr=2e-3",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.threads is None and not torch.cuda.is_available():
        args.threads = max(1, (os.cpu_count() or 1) - 1)
    shards = shards_for(args.out)
    results: dict[str, Any] = {"machine": machine(), "budget_s": args.budget_s}
    results["throughput"] = throughput(shards, args.steps, args.threads)
    if not args.skip_learning:
        # the learning run sizes its steps from the rate the tiny model shows
        # here, less a share for the loader and validation running beside it;
        # on a GPU the loader is the slower of the two
        rate = _tiny_rate(results, shards, args.steps)
        if torch.cuda.is_available():
            loader = results["throughput"]["loader_rate"]["samples_per_s"]
            rate = min(rate, float(loader))
        results["learning"] = learning(
            shards, args.out, args.budget_s, PLAN_SHARE * rate, args.threads, args.set
        )
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    (args.out / "bench_train.json").write_text(
        json.dumps(results, indent=2, default=str)
    )
    table = render(results)
    (args.out / "bench_train.md").write_text(table)
    sys.stdout.write(table)
    learned = results.get("learning")
    return 1 if learned and learned["evaluation"]["top1"] < LEARNING_GOAL else 0


def _tiny_rate(results: dict[str, Any], shards: Path, steps: int) -> float:
    """The tiny model's train rate: from the throughput part, or measured now."""
    if results["throughput"]["model"] == "kgclip-tiny":
        return float(results["throughput"]["model_rate"]["samples_per_s"])
    config = read_config(compose_train(f"train.data.shards={shards}"))
    return float(model_rate(config, shards, steps)["samples_per_s"])


if __name__ == "__main__":
    raise SystemExit(main())
