#!/usr/bin/env bash
# The main job on real MNIST, from data to pictures. Run through `make demo`.
set -euo pipefail
ml=.venv/bin/mnistlab
mkdir -p out
$ml data fetch --dataset mnist
$ml data info --dataset mnist
$ml data show --dataset mnist --split test --first 64 --out out/mnist-test-first64.png

# The seed's two networks trained on CPU with the seed's recipes (the CNN's 5 epochs reach ~99%),
# then one self-contained HTML report for each: curves, confusions, 4 vs 9, ambiguous images,
# OIPs. How long it takes: docs/performance.md.
runs=${RUNS:-runs}
$ml train mlp --preset seed --out "$runs/demo-mlp-seed" --overwrite
$ml train cnn --spec seed --device cpu --out "$runs/demo-cnn-seed" --overwrite
mlp_report=$($ml report "$runs/demo-mlp-seed" --out out/report-mlp-seed.html)
cnn_report=$($ml report "$runs/demo-cnn-seed" --out out/report-cnn-seed.html)
echo
echo "Reports (open them in a browser):"
echo "  MLP: $mlp_report"
echo "  CNN: $cnn_report"
