"""torchrun scale-out on CPU with gloo over loopback: results identical to a single process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _cli_setup import checkpoint_and_images, free_port
from camlens.distributed import Context, ProgressLog, pack_counts, shard_batches, unpack_counts
from camlens.models import load_model

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default; the single-process run matches it


def _torchrun(nproc: int, *args, cwd):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "camlens",
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=240, env=ONE_THREAD)


@pytest.mark.parametrize("world", [2, 3])
def test_batches_are_dealt_out_with_no_duplicates_no_gaps_and_the_single_process_composition(world):
    single = shard_batches(11, 3, Context(0, 1, 0, torch.device("cpu")))
    assert [b for _, b in single] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    parts = [shard_batches(11, 3, Context(r, world, r, torch.device("cpu"))) for r in range(world)]
    assert sorted(j for p in parts for j, _ in p) == [0, 1, 2, 3]
    assert sorted((j, b) for p in parts for j, b in p) == [(j, b) for j, b in single]  # same batches, dealt out
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_packed_counts_round_trip_exactly():
    counts = {"a": torch.arange(12).reshape(3, 4) * 10**12, "b": torch.zeros(0, dtype=torch.long)}
    back = unpack_counts(__import__("json").loads(__import__("json").dumps(pack_counts(counts))))
    assert all(torch.equal(back[k], counts[k]) for k in counts)


def test_progress_log_ignores_a_torn_last_line(tmp_path):
    log = ProgressLog(tmp_path, Context(0, 1, 0, torch.device("cpu")))
    log.append([{"file": "a"}, {"file": "b"}])
    with open(log.path, "a") as f:
        f.write('{"file": "c", "rec')  # a crash in the middle of a write
    assert [e["file"] for e in ProgressLog.read_all(tmp_path)] == ["a", "b"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = checkpoint_and_images(tmp_path_factory.mktemp("dist"), 7)  # 7 images: an uneven split over 2 and 3 ranks
    (root / "imgs" / "broken.png").write_text("no")
    return root


def crash_after_two_batches():
    """A progress callback that interrupts the run when the third batch is reported done (the first call reports
    the work already done: none)."""
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    return progress


def _outputs(folder):
    summary = json.loads((folder / "summary.json").read_text())
    files = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    return summary, files


def test_explain_with_two_and_three_ranks_equals_one_process(images):
    args = ["explain", "imgs", "--checkpoint", "m.safetensors", "--topk", "2", "--batch-size", "2", "--quiet"]
    single = subprocess.run(
        [sys.executable, "-m", "camlens", *args, "--out", "one"],
        cwd=images,
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    )
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
        with pytest.raises(KeyboardInterrupt):
            explain_files(
                loaded,
                cam,
                paths,
                tmp_path / "part",
                topk=2,
                batch_size=2,
                run_key={"k": 1},
                progress=crash_after_two_batches(),
            )
        assert not (tmp_path / "part" / "summary.json").exists()
        redone = []
        resumed = explain_files(
            loaded, cam, paths, tmp_path / "part", topk=2, batch_size=2, run_key={"k": 1}, progress=redone.append
        )
        assert redone[0] == 4  # the first two batches were skipped
        assert resumed.records == full.records and resumed.errors == full.errors
        assert _outputs(tmp_path / "part") == _outputs(tmp_path / "full")
        with pytest.raises(Exception, match="other options"):
            explain_files(loaded, cam, paths, tmp_path / "part", topk=1, run_key={"k": 2})


def test_evaluate_with_two_and_three_ranks_gives_the_single_process_metrics(images):
    args = [
        "evaluate",
        "--checkpoint",
        "m.safetensors",
        "--num-images",
        "11",
        "--batch-size",
        "3",
        "--faithfulness",
        "--steps",
        "4",
        "--pointing-tolerance",
        "4",
        "--quiet",
    ]  # 4 batches, uneven over ranks
    single = subprocess.run(
        [sys.executable, "-m", "camlens", *args, "--json", "one.json"],
        cwd=images,
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    expected = json.loads((images / "one.json").read_text())
    assert expected["num_images"] == 11 and expected["insertion_auc"] is not None
    for world in (2, 3):
        proc = _torchrun(world, *args, "--json", f"w{world}.json", cwd=images)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((images / f"w{world}.json").read_text()) == expected  # exactly, faithfulness included
        assert proc.stdout.count("MaxBoxAcc ") == 1  # one table, from rank 0


def test_interrupted_evaluate_resumes_to_the_same_metrics(images, tmp_path):
    from camlens import GradCAM
    from camlens.data.samples import dataset_samples
    from camlens.evaluation import evaluate_model
    from camlens.metrics.faithfulness import FaithfulnessConfig

    loaded = load_model(images / "m.safetensors")
    samples = dataset_samples("builtin", num_images=10)
    config = FaithfulnessConfig(steps=4, tolerance=4)
    run = dict(batch_size=3, faithfulness=config, run_key={"k": 1})
    with GradCAM(loaded.model) as explainer:
        full = evaluate_model(loaded, explainer, samples, **run)
        with pytest.raises(KeyboardInterrupt):
            evaluate_model(loaded, explainer, samples, progress_dir=tmp_path, progress=crash_after_two_batches(), **run)
        redone = []
        resumed = evaluate_model(loaded, explainer, samples, progress_dir=tmp_path, progress=redone.append, **run)
        assert redone[0] == 6  # the first two batches came from the log
        assert resumed == full
        with pytest.raises(Exception, match="other options"):
            evaluate_model(loaded, explainer, samples, progress_dir=tmp_path, batch_size=3, run_key={"k": 2})


def test_a_crashing_rank_says_which_rank_and_how_to_resume(images, monkeypatch, capsys):
    import camlens.pipeline
    from camlens.cli import main

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(camlens.pipeline, "explain_files", crash)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.chdir(images)
    with pytest.raises(RuntimeError, match="disk full"):  # the traceback still reaches torchrun's report
        main(["explain", "imgs", "--checkpoint", "m.safetensors", "--quiet", "--out", "crash"])
    err = capsys.readouterr().err
    assert "rank 1 failed (RuntimeError: disk full)" in err and "rerunning the same command resumes" in err
    assert not (images / "crash" / "summary.json").exists()


def test_a_hung_rank_ends_the_job_after_the_timeout_with_one_line_naming_it(images):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(Path(__file__).with_name("_hung_rank.py")),
        "explain",
        "imgs",
        "--checkpoint",
        "m.safetensors",
        "--out",
        "hung",
        "--quiet",
        "--dist-timeout",
        "3",
    ]
    began = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=images, timeout=240, env=ONE_THREAD)
    assert proc.returncode != 0
    assert time.monotonic() - began < 120  # not torch's default 30 minutes
    lines = [line for line in proc.stderr.splitlines() if line.startswith("camlens: ")]
    assert len(lines) == 1 and lines[0].startswith("camlens: error: rank 0: rank 1 did not answer within 3 s"), (
        proc.stderr[-2000:]
    )
    assert "--dist-timeout" in lines[0]


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    """`--device cuda` under torchrun becomes cuda:LOCAL_RANK (modulo the GPUs present), without a GPU here."""
    from camlens import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for local, expected in [("0", "cuda:0"), ("1", "cuda:1"), ("3", "cuda:1")]:
        monkeypatch.setenv("LOCAL_RANK", local)
        ctx = distributed.setup("cuda")
        assert str(ctx.device) == expected and str(chosen[-1]) == expected
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert str(distributed.setup("cuda:0").device) == "cuda:0"  # an explicit index is kept
