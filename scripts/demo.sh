#!/usr/bin/env bash
# The main job on real MNIST, from data to pictures. Run through `make demo`.
set -euo pipefail
ml=.venv/bin/mnistlab
mkdir -p out
$ml data fetch --dataset mnist
$ml data info --dataset mnist
$ml data show --dataset mnist --split test --first 64 --out out/mnist-test-first64.png
