"""DP-SGD overhead: the fast engine against plain PyTorch and Opacus, in one interleaved run.

One epoch over 20k synthetic contract rows (schemas.synthetic, validated and encoded as the
clinics do), for the default model and a wider MLP, batch 256 and 1024. Modes:

* ``plain``: non-private SGD on in-memory tensors (shuffled index slices): the floor.
* ``plain_dataloader``: the same with a ``DataLoader``.
* ``opacus_hooks``: the project's Opacus engine, ``make_private`` defaults with its Poisson
  ``DataLoader`` (how Flower's Opacus example trains).
* ``opacus_ghost``: ``make_private(grad_sample_mode="ghost")`` (fast gradient clipping).
* ``func_vmap``: per-sample gradients with ``torch.func.vmap(grad)`` on in-memory Poisson
  batches, then the same clipping and noise: the other vectorised candidate.
* ``fast``: the project's fast engine (client.dp_fast, ghost norms).

Repetitions are interleaved (every mode once per repetition, in turn), so background load
hits all modes alike; ratios are medians of the per-repetition ratios.

    python bench/dp_overhead.py [--json] [--quick] [--repetitions 5] [--threads 1] [--write-doc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402
from oralfed.client.dp_engines import get_dp_engine  # noqa: E402
from oralfed.client.secure_random import DpRandom  # noqa: E402
from oralfed.client.training import DpRoundPlan, plan_dp_round  # noqa: E402
from oralfed.schemas.features import Task, encode_features, encode_labels, has_label  # noqa: E402
from oralfed.schemas.importer import validate_row  # noqa: E402
from oralfed.schemas.model import build_model  # noqa: E402
from oralfed.schemas.synthetic import clinic_profiles, synthesize_clinic  # noqa: E402

MODELS: dict[str, tuple[int, ...]] = {
    "default 23-64-32-1": (64, 32),
    "wide 23-256-256-1": (256, 256),
}
BATCHES = (256, 1024)
HEADLINE = ("default 23-64-32-1", 256)
TARGET_VS_PLAIN, TARGET_VS_OPACUS = 1.3, 0.33
LEARNING_RATE, CLIP_NORM, NOISE_MULTIPLIER = 0.1, 1.0, 1.0

Trainer = Callable[[nn.Module, np.ndarray, np.ndarray, DpRoundPlan], None]


def contract_rows(n_rows: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``n_rows`` synthetic clinic rows, validated by the contract and encoded for training."""
    records = []
    clinics = 1
    while len(records) < n_rows:
        clinics *= 2
        records = [
            record
            for profile in clinic_profiles(clinics, seed)
            for record in (validate_row(row)[0] for row in synthesize_clinic(profile, seed))
            if record is not None and has_label(record, Task.UNTREATED_CARIES)
        ]
    records = records[:n_rows]
    return encode_features(records), encode_labels(records, Task.UNTREATED_CARIES)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, foreach=True)


def plain(model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan) -> None:
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer, criterion = _sgd(model), nn.BCEWithLogitsLoss()
    order = torch.randperm(len(labels))
    for start in range(0, len(labels), plan.batch_size):
        batch = order[start : start + plan.batch_size]
        optimizer.zero_grad()
        criterion(model(features[batch]), labels[batch]).backward()
        optimizer.step()


def plain_dataloader(model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan) -> None:
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=plan.batch_size,
        shuffle=True,
    )
    optimizer, criterion = _sgd(model), nn.BCEWithLogitsLoss()
    for features, labels in loader:
        optimizer.zero_grad()
        criterion(model(features), labels).backward()
        optimizer.step()


def opacus_hooks(model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan) -> None:
    get_dp_engine("opacus").train(model, x, y, plan)


def opacus_ghost(model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan) -> None:
    from opacus import PrivacyEngine

    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=plan.batch_size
    )
    private_model, optimizer, criterion, private_loader = PrivacyEngine().make_private(
        module=model,
        optimizer=_sgd(model),
        data_loader=loader,
        criterion=nn.BCEWithLogitsLoss(),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.clip_norm,
        grad_sample_mode="ghost",
    )
    for features, labels in private_loader:
        optimizer.zero_grad()
        criterion(private_model(features), labels).backward()
        optimizer.step()


def func_vmap(model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan) -> None:
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    rng = DpRandom.from_seed(0)
    parameters = dict(model.named_parameters())
    divisor = plan.expected_batch_size

    def sample_loss(
        params: dict[str, torch.Tensor], row: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor:
        logit = torch.func.functional_call(model, params, (row[None],))
        return nn.functional.binary_cross_entropy_with_logits(logit, label[None])

    per_sample_grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    optimizer = _sgd(model)
    for batch in rng.poisson_batches(len(labels), plan.sample_rate, plan.steps):
        detached = {name: p.detach() for name, p in parameters.items()}
        grads = per_sample_grads(detached, features[batch], labels[batch])
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], 1).norm(dim=1)
        factors = (plan.clip_norm / (norms + 1e-6)).clamp(max=1.0)
        for name, parameter in parameters.items():
            summed = torch.einsum("i,i...", factors, grads[name])
            noise = torch.normal(0.0, plan.noise_multiplier * plan.clip_norm, summed.shape)
            parameter.grad = (summed + noise) / divisor
        optimizer.step()


def fast(model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan) -> None:
    get_dp_engine("fast").train(model, x, y, plan)


MODES: dict[str, Trainer] = {
    "plain": plain,
    "plain_dataloader": plain_dataloader,
    "opacus_hooks": opacus_hooks,
    "opacus_ghost": opacus_ghost,
    "func_vmap": func_vmap,
    "fast": fast,
}


@dataclass
class Case:
    model: str
    batch_size: int
    plan: DpRoundPlan
    seconds: dict[str, list[float]]
    cpu_seconds: dict[str, list[float]]

    def ratio(self, mode: str, baseline: str, *, cpu: bool = False) -> float:
        """Median over repetitions of the paired ratio: robust to load that drifts."""
        times = self.cpu_seconds if cpu else self.seconds
        return statistics.median(a / b for a, b in zip(times[mode], times[baseline], strict=True))

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "steps_per_epoch": self.plan.steps,
            "median_ms": {m: 1000 * statistics.median(s) for m, s in self.seconds.items()},
            "ratio_vs_plain": {m: self.ratio(m, "plain") for m in self.seconds},
            "cpu_ratio_vs_plain": {m: self.ratio(m, "plain", cpu=True) for m in self.seconds},
            "fast_vs_opacus_hooks": self.ratio("fast", "opacus_hooks"),
        }


def run(n_rows: int, repetitions: int) -> dict[str, Any]:
    x, y = contract_rows(n_rows)
    cases = [
        Case(
            name,
            batch,
            plan_dp_round(
                public_size=len(y),
                batch_size=batch,
                local_epochs=1,
                learning_rate=LEARNING_RATE,
                clip_norm=CLIP_NORM,
                total_rounds=1,
                delta=1e-5,
                noise_multiplier=NOISE_MULTIPLIER,
            ),
            {mode: [] for mode in MODES},
            {mode: [] for mode in MODES},
        )
        for name in MODELS
        for batch in BATCHES
    ]
    load_before = os.getloadavg()
    for repetition in range(-1, repetitions):  # repetition -1 warms up (imports, allocator)
        for case in cases:
            for mode, trainer in MODES.items():
                model = build_model(MODELS[case.model], seed=repetition + 2)
                started, cpu_started = time.perf_counter(), time.process_time()
                trainer(model, x, y, case.plan)
                if repetition >= 0:
                    case.seconds[mode].append(time.perf_counter() - started)
                    case.cpu_seconds[mode].append(time.process_time() - cpu_started)
    headline = next(c for c in cases if (c.model, c.batch_size) == HEADLINE)
    return {
        "ratio_vs_plain": headline.ratio("fast", "plain"),
        "ratio_vs_opacus_default": headline.ratio("fast", "opacus_hooks"),
        # The same ratios in this process's CPU time: what other jobs' load cannot inflate.
        "cpu_ratio_vs_plain": headline.ratio("fast", "plain", cpu=True),
        "cpu_ratio_vs_opacus_default": headline.ratio("fast", "opacus_hooks", cpu=True),
        "targets": {"ratio_vs_plain": TARGET_VS_PLAIN, "ratio_vs_opacus_default": TARGET_VS_OPACUS},
        "headline": {"model": HEADLINE[0], "batch_size": HEADLINE[1]},
        "rows": len(y),
        "repetitions": repetitions,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": machine_description(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cases": [case.summary() for case in cases],
    }


def markdown(result: dict[str, Any], command: str) -> str:
    modes = list(MODES)
    headline = next(
        c for c in result["cases"] if (c["model"], c["batch_size"]) == (HEADLINE[0], HEADLINE[1])
    )
    lines = [
        "## DP-SGD overhead (bench/dp_overhead.py)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {result['machine']}; torch {result['torch_version']} CPU, "
        f"{result['torch_threads']} torch thread(s); {result['rows']} synthetic contract rows, "
        f"one epoch per timing, medians of {result['repetitions']} interleaved repetitions. "
        f"Load average (1 min) before/after: {result['load_average_before_after'][0]} / "
        f"{result['load_average_before_after'][1]}: other engineers' jobs shared the 2 cores, "
        "so ratios pair the modes within each repetition, and the same ratios are also given "
        "in this process's CPU time, which that load cannot inflate.",
        "",
        f"Headline (default model, batch 256), wall clock: **fast / plain = "
        f"{result['ratio_vs_plain']:.2f}** (target ≤ {TARGET_VS_PLAIN}), **fast / Opacus "
        f"default = {result['ratio_vs_opacus_default']:.2f}** (target ≤ {TARGET_VS_OPACUS}); "
        f"CPU time: {result['cpu_ratio_vs_plain']:.2f} and "
        f"{result['cpu_ratio_vs_opacus_default']:.2f}.",
        "",
        "Milliseconds per epoch, wall clock (in brackets: ratio to plain in-memory PyTorch, "
        "wall clock / CPU time). Under shifting load the millisecond medians are taken over "
        "different repetitions per mode and may even rank modes wrongly; the ratios, paired "
        "within each repetition, are the figures to read:",
        "",
        "| model | batch | " + " | ".join(modes) + " |",
        "|---|---|" + "---|" * len(modes),
    ]
    for case in result["cases"]:
        cells = [
            f"{case['median_ms'][m]:.0f} ({case['ratio_vs_plain'][m]:.2f} / "
            f"{case['cpu_ratio_vs_plain'][m]:.2f})"
            for m in modes
        ]
        lines.append(f"| {case['model']} | {case['batch_size']} | " + " | ".join(cells) + " |")
    wall = headline["ratio_vs_plain"]
    lines += [
        "",
        "What was tried, and why `fast` is the engine (figures: default model, batch 256, "
        "this run, ratio to plain in memory):",
        "",
        f"- `plain_dataloader` ({wall['plain_dataloader']:.2f}): the `DataLoader` alone costs "
        "more than all of DP; every in-memory mode avoids it.",
        f"- `opacus_hooks` ({wall['opacus_hooks']:.2f}), Opacus's default and Flower's "
        "example: materialises batch x parameters per-sample gradients and walks a "
        "`DataLoader`; kept as the `--dp-engine opacus` reference.",
        f"- `opacus_ghost` ({wall['opacus_ghost']:.2f}): ghost clipping, but still the "
        "`DataLoader` and a second full backward pass.",
        f"- `func_vmap` ({wall['func_vmap']:.2f}): `torch.func.vmap(grad)` per-sample "
        "gradients on in-memory Poisson batches; vectorised, but materialises per-sample "
        "gradients (the wide model pays for it in memory traffic).",
        f"- `fast` ({wall['fast']:.2f}): ghost norms for `nn.Linear` (per-sample norms from "
        "each layer's input and output gradient, no per-sample gradient stored), the clipped "
        "sum as one `addmm` per layer with 1/E folded into `alpha`, no second backward, "
        "Poisson batches from geometric gaps (O(batch) draws, many steps per call). During "
        "development a first version that drew one uniform per record per step and added "
        "noise and 1/E in separate passes measured about 1.9-2.0x plain; what is left now is "
        "per-operation dispatch on tiny matrices (about 35 small kernels per step: hooks, "
        "norms, six `normal_` calls drawn per parameter exactly as Opacus draws them), "
        "visible in cProfile as `linalg_vecdot`, `normal_`, `addmm_` and module-call "
        "overhead; the arithmetic itself is about that of plain training. For the wide model "
        "the remaining cost is arithmetic: each 256-wide activation is read twice more (its "
        "per-sample norm and its scaling by the clipping factors).",
        "",
        "All modes run one thread (`--threads 1`): on these tiny matrices intra-op threads "
        "gain nothing, and on a shared 2-core machine oversubscribed threads made every mode "
        "several times slower and the timings meaningless.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="2 repetitions (development)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--write-doc", action="store_true", help="replace this section of docs/benchmarks.md"
    )
    arguments = parser.parse_args()
    if arguments.repetitions < 1 or arguments.rows < 1 or arguments.threads < 1:
        parser.error("--repetitions, --rows and --threads must be at least 1")
    torch.set_num_threads(arguments.threads)
    warnings.filterwarnings("ignore")  # Opacus's secure-RNG notice, once per make_private
    result = run(arguments.rows, 2 if arguments.quick else arguments.repetitions)
    command = "python bench/dp_overhead.py " + " ".join(sys.argv[1:])
    if arguments.write_doc:
        replace_section("dp-overhead", markdown(result, command.strip()))
    print(json.dumps(result, indent=2) if arguments.json else markdown(result, command.strip()))


if __name__ == "__main__":
    main()
