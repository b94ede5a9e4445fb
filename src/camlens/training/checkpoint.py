"""What a run writes: self-describing weights, and one resume file.

``best.safetensors`` and ``last.safetensors`` are camlens checkpoints (weights, with arch, class names,
preprocessing and how the run chose them in the metadata; ``--checkpoint`` alone rebuilds the model).
``resume.safetensors`` holds the latest weights, the optimizer's tensors and the run's state (settings, epoch,
best score, history) in one file, so the state and the weights it describes cannot disagree; every file is
written to a temporary name and renamed, so a crash leaves the previous version or the new one, never half of
one.  ``train_state.json`` repeats the state for people.  Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CamlensError
from ..files import atomic_path, write_atomic
from ..models import Preprocess

BEST = "best.safetensors"
LAST = "last.safetensors"
RESUME = "resume.safetensors"
STATE = "train_state.json"


def weights(model: nn.Module) -> dict[str, Tensor]:
    """A contiguous CPU copy of ``model``'s state dict (the model may train in channels-last)."""
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def _save(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_weights(
    path: Path,
    state: dict[str, Tensor],
    *,
    arch: str,
    class_names: list[str],
    preprocess: Preprocess,
    arch_options: dict[str, Any] | None,
    extra: dict[str, Any],
) -> None:
    """A camlens checkpoint (the metadata of :func:`camlens.models.save_checkpoint`), written atomically."""
    meta = {"arch": arch, "class_names": list(class_names), "preprocess": preprocess.to_json(), **extra}
    if arch_options:
        meta["arch_options"] = dict(arch_options)
    _save(path, state, {"camlens": json.dumps(meta)})


def keep_as_best(last: Path, best: Path) -> None:
    """Make ``best`` the file ``last`` is now: a hard link (``last`` is always replaced by a rename, never
    rewritten, so the link keeps this epoch's weights), or a copy where the filesystem has no links."""
    import shutil

    with atomic_path(best) as tmp:
        try:
            os.link(last, tmp)
        except OSError:
            shutil.copyfile(last, tmp)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_resume(out: Path, model_state: dict[str, Tensor], optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The resume file (weights under ``model/``, optimizer tensors under ``optimizer/``, ``state`` and the
    optimizer's JSON part in the metadata), then ``train_state.json``."""
    tensors, rest = optimizer_tensors(optimizer)
    packed = {f"model/{k}": v for k, v in model_state.items()} | {f"optimizer/{k}": v for k, v in tensors.items()}
    full = {**state, "optimizer": rest}
    _save(out / RESUME, packed, {"camlens_train": json.dumps(full)})
    write_atomic(out / STATE, json.dumps(state, indent=1))


def load_resume(out: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """(model weights, optimizer tensors, state with its ``optimizer`` part) from ``out``'s resume file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = out / RESUME
    if not path.is_file():
        raise CamlensError(f"--resume: {out} holds no interrupted run ({RESUME}); drop --resume")
    with safe_open(str(path), framework="pt") as f:
        state = json.loads((f.metadata() or {})["camlens_train"])
    packed = load_file(str(path))
    model = {k[len("model/") :]: v for k, v in packed.items() if k.startswith("model/")}
    optim = {k[len("optimizer/") :]: v for k, v in packed.items() if k.startswith("optimizer/")}
    return model, optim, state
