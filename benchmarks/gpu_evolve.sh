#!/usr/bin/env bash
# The evolution figures that issue #4 needs from a GPU, in one go (~8 minutes on an H100).
#
#   bash benchmarks/gpu_evolve.sh [OUTDIR]      (default: runs/gpu-evolve)
#
# Run from the repository root with a CUDA build of jax and fooltools' dependencies
# importable. Writes, and prints:
#   bench.txt    bench_evolve.py, all rows: search overhead vs the classifier alone
#                (target <= 15%), speed-up over the naive loop (target >= 10x) and the
#                paper's 1000-class MAP-Elites run time projected from its own rate;
#   es-xla.txt   the ES row again with its XLA render instead of the Pallas kernel
#                (FOOLTOOLS_PALLAS=0): what the kernel gains;
#   no-lookahead.txt  the direct GA and ES rows with --lookahead off (each generation
#                dispatched only after the last is collected): what lookahead gains;
#   phases.txt   evolve_phases.py: each search's generation split into its parts.
set -euo pipefail
out=${1:-runs/gpu-evolve}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null | tee "$out/device.txt" || true
python3 benchmarks/bench_evolve.py --generations 10 --naive 20 | tee "$out/bench.txt"
FOOLTOOLS_PALLAS=0 python3 benchmarks/bench_evolve.py --only cppn-es --generations 10 \
  --naive 5 | tee "$out/es-xla.txt"
python3 benchmarks/bench_evolve.py --only direct-ga --only cppn-es --generations 10 \
  --naive 5 --lookahead off | tee "$out/no-lookahead.txt"
python3 benchmarks/evolve_phases.py --repeats 20 | tee "$out/phases.txt"
