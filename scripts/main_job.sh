#!/usr/bin/env bash
# The main job, end to end on a CPU: train the Fashion-MNIST demo (training/configs/fast_cpu.yaml),
# sample, evaluate (bits/dim, FID/KID against the test split), draw the figures, and write the
# safetensors pipeline with its model card to $OUT/pipeline. Re-running continues an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/fast-cpu}

bash scripts/setup.sh
# Every launcher setting is passed, so accelerate prints no "values were not passed" warning; the thread count is
# the one it would choose itself (one per physical core).
THREADS=${OMP_NUM_THREADS:-$(python -c "import psutil; print(psutil.cpu_count(logical=False) or 1)")}
accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  --num_cpu_threads_per_process "$THREADS" \
  training/train.py --config fast_cpu --output_dir "$OUT" --resume_from_checkpoint latest "$@"
# Small, CPU-sized evaluation: the numbers are for this demo, not comparable with the paper's 50k-sample FID.
hf-ddpm evaluate "$OUT/pipeline" --dataset fashion_mnist --split test --num-samples 200 \
  --num-inference-steps 250 --bpd-num-images 16 --max-reference-images 500
hf-ddpm plot loss "$OUT/logs" --output "$OUT/pipeline/loss.png"
hf-ddpm plot progressive "$OUT/pipeline" --num-inference-steps 250
hf-ddpm plot schedule --pipeline "$OUT/pipeline" --output "$OUT/pipeline/schedule.png"
hf-ddpm card "$OUT/pipeline"
echo "pipeline, card and figures: $OUT/pipeline"
