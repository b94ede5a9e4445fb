#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go: the CUDA tests, then the CAM and method benchmarks on the GPU,
# with PyTorch's default TF32 convolutions, in plain float32, and with cuDNN's autotuning.  Logs go to OUTDIR; the
# benchmarks write their tables to benchmarks/results/*_cuda*.json, which docs/benchmarks/gpu.md shows.
#
#     benchmarks/gpu.sh [OUTDIR]        # OUTDIR defaults to gpu-out
set -u
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
py=${PYTHON:-python3}
methods="$py benchmarks/bench_methods.py --device cuda"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
$py -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.log"
$py benchmarks/bench_cam.py --device cuda --repeats 30 2>&1 | tee "$out/cam.log"
$methods --repeats 30 --scorecam-rounds 10 --scorecam-rows 64 512 2>&1 | tee "$out/methods_tf32.log"
$methods --skip-gradient --scorecam-batch 8 --scorecam-rounds 5 --scorecam-rows 64 512 2>&1 \
    | tee "$out/scorecam_batch8_tf32.log"
$methods --no-tf32 --repeats 30 --scorecam-rounds 10 --scorecam-rows 64 2>&1 | tee "$out/methods_fp32.log"
$methods --cudnn-benchmark --skip-gradient --scorecam-rounds 10 --scorecam-rows 64 2>&1 \
    | tee "$out/scorecam_cudnn_benchmark.log"
# Vision transformer methods (rollout, GAE, LeGrad, Grad-CAM/Eigen-CAM on tokens) and torchcam's LeGrad, as ratios
# to one forward pass on the GPU (benchmarks/results/vit_cuda.json, beside the CPU figures in vit.json).
$py benchmarks/bench_vit.py --device cuda --repeats 20 2>&1 | tee "$out/vit.log"
# The training half: the loop on the GPU against the CPU run, exact resumption, bfloat16 autocast in channels-last,
# the CLI's train/evaluate on the GPU (tests/test_cuda_training.py), then the loop's throughput against a plain
# PyTorch loop in float32 and with --amp --channels-last (train_loop_cuda, train_loop_cuda_amp).
$py -m pytest tests/test_cuda_training.py -q -rs -p no:cacheprovider 2>&1 | tee "$out/cuda_training_tests.log"
$py benchmarks/bench_train.py --device cuda --size 224 --images 1024 --batch 64 --repeats 5 2>&1 | tee "$out/train_fp32.log"
$py benchmarks/bench_train.py --device cuda --size 224 --images 1024 --batch 64 --repeats 5 --channels-last --amp 2>&1 \
    | tee "$out/train_amp.log"
