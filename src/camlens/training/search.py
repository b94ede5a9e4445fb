"""Fair hyperparameter search for WSOL methods, as Choe et al. (CVPR 2020) prescribe: for every method the same
number of random trials over its own parameters and the learning rate, every trial's checkpoint selected on the
split with boxes (``select_by``, their train-fullsup), the best trial per method chosen on that split too, and
only then reported on the test split.  The test split never influences a choice.

Trials are drawn from generators seeded by (seed, method name, trial number), so a rerun draws the same trials;
every finished trial leaves ``result.json`` in its folder and is never rerun, an interrupted one resumes from its
last epoch.  Under torchrun the trials are dealt out to the ranks round robin, each trained on one process on the
rank's device; rank 0 writes the table and ``search.json`` once every rank is done.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .. import distributed
from ..constants import PAPER_THRESHOLD
from ..distributed import Context
from ..errors import CamlensError
from ..files import write_atomic
from ..models import LoadedModel
from .checkpoint import RESUME, STATE
from .config import TrainConfig
from .data import TrainData, config_data
from .loop import train
from .wsol import WSOL_METHODS, Param, get_wsol_method

RESULT = "result.json"
SUMMARY = "search.json"
DEFAULT_LR_RANGE = (1e-4, 1e-2)  # log-uniform; Choe et al. search SGD rates log-uniformly too
REPORTED = ("accuracy", "gt_known_loc", "maxboxacc_v2", "pxap")


@dataclass(frozen=True)
class Trial:
    """One draw: ``method`` with ``params`` at learning rate ``lr``; ``number`` counts the method's trials."""

    method: str
    number: int
    lr: float
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.method}-{self.number:03d}"


def draw_trials(
    methods: Sequence[str], trials: int, *, seed: int = 0, lr_range: tuple[float, float] = DEFAULT_LR_RANGE
) -> list[Trial]:
    """``trials`` random draws for each method: the learning rate log-uniform in ``lr_range`` and each parameter of
    the method's :attr:`~camlens.training.wsol.TrainingMethod.search_space`; trial k of a method depends only on
    (seed, method, k), so adding methods or trials leaves the others' draws unchanged."""
    if trials < 1:
        raise CamlensError(f"--trials {trials} must be at least 1")
    low, high = lr_range
    if not 0 < low <= high:
        raise CamlensError(f"--lr-range {low} {high}: give 0 < LOW <= HIGH")
    out = []
    for name in methods:
        if name not in WSOL_METHODS:
            raise CamlensError(f"unknown WSOL method {name!r}; choose from {', '.join(WSOL_METHODS)}")
        space: dict[str, Param] = WSOL_METHODS[name].search_space
        for k in range(trials):
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()) * 1009 + k)
            lr = Param("loguniform", low, high).sample(g)
            out.append(Trial(name, k, lr, {p: space[p].sample(g) for p in sorted(space)}))
    return out


def report_samples(
    config: TrainConfig,
    data: TrainData,
    test_data: str | None,
    split: str,
    num_images: int | None,
    images: str | None = None,
) -> Dataset:
    """The split the search reports on: the built-in dataset's test split at the training size, or ``split``
    of ``test_data`` (default: ``config.data``), read as ``camlens evaluate`` reads it."""
    from ..data.samples import BuiltinSamples, dataset_samples

    source = test_data or config.data
    if source == "builtin":
        from ..data.builtin import BuiltinDataset

        return BuiltinSamples(
            BuiltinDataset(
                split,  # type: ignore[arg-type]
                num_images=num_images,
                image_size=data.image_size,
                seed=config.seed,
            )
        )
    return dataset_samples(
        source,
        split,
        num_images=num_images,
        images=images or config.images,
        mask_root=config.mask_root,
        class_names=data.classes,
    )


def evaluate_trial(
    result_model,
    method,
    samples: Dataset,
    class_names: list[str],
    preprocess,
    device: torch.device,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Test metrics of a trained trial: classification accuracy (%) and every localization metric of
    ``camlens evaluate`` with the method's maps."""
    from ..evaluation import evaluate_model

    loaded = LoadedModel(result_model, class_names, preprocess, "")
    with method.explainer(result_model) as explainer:
        metrics = evaluate_model(
            loaded,
            explainer,
            samples,
            batch_size=batch_size,
            paper_threshold=PAPER_THRESHOLD,
            ctx=Context(0, 1, 0, device),
        )
    return {**metrics, "accuracy": metrics["top1_cls"]}


def run_trial(
    trial: Trial, config: TrainConfig, data: TrainData, samples: Dataset, out: Path, device: torch.device, rank: int = 0
) -> dict[str, Any]:
    """Train one trial into ``out/<trial>`` (resuming an interrupted one), then score its selected checkpoint on
    the test ``samples``; the record is written to ``result.json`` last, so it marks a finished trial."""
    folder = out / trial.name
    method = get_wsol_method(trial.method, **trial.params)
    method.check_input((data.image_size, data.image_size))
    resume = (folder / RESUME).is_file() and (folder / STATE).is_file()
    # the trial's folder is the search's own: a trial killed before its first resume file restarts in it
    cfg = replace(
        config, out=str(folder), lr=trial.lr, resume=resume, overwrite=not resume, progress=False, device=str(device)
    )
    began = time.perf_counter()
    result = train(cfg, method=method, prepared=data, log=None, ctx=Context(0, 1, 0, device))
    seconds = time.perf_counter() - began
    test = evaluate_trial(result.model, method, samples, data.classes, result.preprocess, device)
    record = {
        "trial": trial.name,
        "method": trial.method,
        "number": trial.number,
        "lr": trial.lr,
        "params": trial.params,
        "config": method.config(),
        "select_by": result.select_by,
        "val_score": result.best_score,
        "val_acc": 100.0 * result.best_val_acc,
        "best_epoch": result.best_epoch,
        "checkpoint": str(result.checkpoint),
        "train_seconds": seconds,
        "rank": rank,
        "test": {k: test.get(k) for k in (*REPORTED, "top1_loc", "maxboxacc", "best_threshold")},
        "baselines": test.get("baselines"),
    }
    write_atomic(folder / RESULT, json.dumps(record, indent=1))
    return record


def read_result(out: Path, trial: Trial) -> dict[str, Any] | None:
    path = out / trial.name / RESULT
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("params") != trial.params or not math.isclose(record.get("lr", -1), trial.lr, rel_tol=1e-12):
        raise CamlensError(
            f"{path} holds a trial with other parameters than this search draws (another --seed or "
            "--lr-range?); use another --out or delete it"
        )
    return record


@dataclass
class SearchResult:
    trials: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]  # method -> its best trial's record, chosen on the selection split
    table: str


def best_per_method(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each method's trial with the highest selection score (ties: the earlier trial)."""
    best: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (r["method"], r["number"])):
        if r["method"] not in best or r["val_score"] > best[r["method"]]["val_score"]:
            best[r["method"]] = r
    return best


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_search(records: Sequence[dict[str, Any]], best: dict[str, dict[str, Any]]) -> str:
    """A table of every trial, then one of each method's selected trial on the test split."""
    select_by = records[0]["select_by"] if records else "score"
    lines = [f"{'trial':<12} {'lr':>9} {select_by + ' (val)':>18} {'acc':>6}  params"]
    for r in sorted(records, key=lambda r: (r["method"], r["number"])):
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        mark = " *" if best.get(r["method"]) is r else ""
        lines.append(f"{r['trial']:<12} {r['lr']:>9.2e} {r['val_score']:>18.2f} {r['val_acc']:>6.1f}  {params}{mark}")
    lines += [
        "",
        f"selected on the boxed split by {select_by} (* above), reported on the test split:",
        f"{'method':<8} {'accuracy':>9} {'GT-known':>9} {'MaxBoxAccV2':>12} {'PxAP':>6}  {select_by} (val)",
    ]
    for name in (m for m in WSOL_METHODS if m in best):
        t = best[name]["test"]
        lines.append(
            f"{name:<8} {_fmt(t['accuracy']):>9} {_fmt(t['gt_known_loc']):>9} {_fmt(t['maxboxacc_v2']):>12} "
            f"{_fmt(t['pxap']):>6}  {best[name]['val_score']:.2f}"
        )
    return "\n".join(lines)


def search(
    config: TrainConfig,
    methods: Sequence[str] = tuple(WSOL_METHODS),
    trials: int = 4,
    *,
    out: str | Path = "camlens-tune",
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE,
    test_data: str | None = None,
    test_split: str = "test",
    num_test: int | None = None,
    test_images: str | None = None,
    ctx: Context | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> SearchResult | None:
    """Random search of ``trials`` trials per method (see the module docstring) with every other setting from
    ``config`` (its ``select_by`` must be a localization metric, its ``out`` and ``lr`` are set per trial).
    Returns the result on rank 0 (None on the other ranks) and writes ``search.json`` in ``out``."""
    if config.select_by == "accuracy":
        raise CamlensError(
            "a fair search selects on a split with boxes: give --select-by maxboxacc_v2 (or "
            "another localization metric), not accuracy"
        )
    ctx = ctx or distributed.setup(config.device)
    say = (log or (lambda _: None)) if ctx.is_main else (lambda _: None)
    draws = draw_trials(methods, trials, seed=config.seed, lr_range=lr_range)
    for name in dict.fromkeys(t.method for t in draws):  # bad parameters and inputs fail before any training
        get_wsol_method(name)
    out = Path(out)
    data = config_data(config)
    for t in draws:
        get_wsol_method(t.method, **t.params).check_input((data.image_size, data.image_size))
    samples = report_samples(config, data, test_data, test_split, num_test, test_images)
    mine = draws[ctx.rank :: ctx.world_size]
    done = {t.name: r for t in mine if (r := read_result(out, t)) is not None}
    say(
        f"{len(draws)} trials ({trials} per method, {len(methods)} methods) in {out}"
        + (f"; {len(done)} of this rank's already finished" if done else "")
    )
    with tqdm(
        total=len(mine),
        initial=len(done),
        unit="trial",
        disable=not (progress and ctx.is_main),
        desc=f"search (rank {ctx.rank})" if ctx.distributed else "search",
    ) as bar:
        for t in mine:
            if t.name in done:
                continue
            bar.set_postfix_str(t.name)
            done[t.name] = run_trial(t, config, data, samples, out, ctx.device, ctx.rank)
            bar.update(1)
    distributed.barrier(ctx)
    if not ctx.is_main:
        return None
    records = [r for t in draws if (r := read_result(out, t)) is not None]
    best = best_per_method(records)
    table = format_search(records, best)
    summary = {
        "select_by": config.select_by,
        "trials_per_method": trials,
        "lr_range": list(lr_range),
        "config": {
            k: v for k, v in asdict(config).items() if k not in ("out", "lr", "resume", "overwrite", "progress")
        },
        "test": {"data": test_data or config.data, "split": test_split, "num_images": len(samples)},  # type: ignore[arg-type]
        "baselines": records[0].get("baselines") if records else None,  # the same test boxes for all
        "best": {m: r["trial"] for m, r in best.items()},
        "trials": records,
    }
    write_atomic(out / SUMMARY, json.dumps(summary, indent=1))
    say(table)
    return SearchResult(records, best, table)
