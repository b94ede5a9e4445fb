"""torchrun scale-out on CPU with gloo over loopback: results identical to a single process."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.distributed import Context, ProgressLog, shard
from camlens.models import GapNet, Preprocess, load_model, save_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "-m", "camlens", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("world", [2, 3])
def test_shards_have_no_duplicates_no_gaps_and_balanced_sizes(world):
    items = list(range(11))
    parts = [shard(items, Context(r, world, r, torch.device("cpu"))) for r in range(world)]
    assert sorted(i for p in parts for i in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_progress_log_ignores_a_torn_last_line(tmp_path):
    log = ProgressLog(tmp_path, Context(0, 1, 0, torch.device("cpu")))
    log.append([{"file": "a"}, {"file": "b"}])
    with open(log.path, "a") as f:
        f.write('{"file": "c", "rec')  # a crash in the middle of a write
    assert [e["file"] for e in ProgressLog.read_all(tmp_path)] == ["a", "b"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    save_checkpoint(root / "m.safetensors", GapNet(4).eval(), arch="gapnet", class_names=list("abcd"),
                    preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3))
    rng = np.random.default_rng(1)
    (root / "imgs").mkdir()
    for i in range(7):  # 7 images: an uneven split over 2 and 3 ranks
        Image.fromarray(rng.integers(0, 255, (24 + i, 30, 3), dtype=np.uint8)).save(root / "imgs" / f"im{i}.png")
    (root / "imgs" / "broken.png").write_text("no")
    return root


def _outputs(folder):
    summary = json.loads((folder / "summary.json").read_text())
    files = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    return summary, files


def test_explain_with_two_and_three_ranks_equals_one_process(images):
    args = ["explain", "imgs", "--checkpoint", "m.safetensors", "--topk", "2", "--batch-size", "2", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "camlens", *args, "--out", "one"], cwd=images,
                            capture_output=True, text=True)
    assert single.returncode == 1 and "broken.png" in single.stderr  # one bad file, the rest done
    expected = _outputs(images / "one")
    assert len(expected[0]["images"]) == 7 and len(expected[1]) == 14
    for world in (2, 3):
        proc = _torchrun(world, *args, "--out", f"w{world}", cwd=images)
        assert proc.returncode != 0 and "broken.png" in proc.stderr, proc.stderr[-2000:]
        got = _outputs(images / f"w{world}")
        assert got[0] == expected[0]
        assert got[1] == expected[1]


def test_interrupted_explain_resumes_to_identical_output(images, tmp_path):
    from camlens import CAM
    from camlens.data.images import expand_paths
    from camlens.pipeline import explain_files

    loaded = load_model(images / "m.safetensors")
    paths, _ = expand_paths([images / "imgs"])
    with CAM(loaded.model) as cam:
        full = explain_files(loaded, cam, paths, tmp_path / "full", topk=2, batch_size=2, run_key={"k": 1})
        calls = []

        def crash_after_two_batches(n):
            calls.append(n)
            if len(calls) == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            explain_files(loaded, cam, paths, tmp_path / "part", topk=2, batch_size=2, run_key={"k": 1},
                          progress=crash_after_two_batches)
        assert not (tmp_path / "part" / "summary.json").exists()
        redone = []
        resumed = explain_files(loaded, cam, paths, tmp_path / "part", topk=2, batch_size=2, run_key={"k": 1},
                                progress=redone.append)
        assert redone[0] == 4  # the first two batches were skipped
        assert resumed.records == full.records and resumed.errors == full.errors
        assert _outputs(tmp_path / "part") == _outputs(tmp_path / "full")
        with pytest.raises(Exception, match="other options"):
            explain_files(loaded, cam, paths, tmp_path / "part", topk=1, run_key={"k": 2})
