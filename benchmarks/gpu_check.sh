#!/usr/bin/env bash
# The GPU checks for the paths built on a CPU-only machine (issues 3 and 7), in one run of under
# ten minutes on one H100/H200: the CUDA-only tests, then the embedding benchmark with fp16 eager
# (the baseline), decoding in processes, two model replicas feeding the GPU (own streams, pinned
# buffers), both, and the max-autotune compile (CUDA graphs). Prints each run's table; record
# them in docs/benchmarks.md.
#
#     bash benchmarks/gpu_check.sh [N]        # N JPEGs (default 2000)
set -u
n=${1:-2000}
common=(--device cuda --precision fp16 --batch-size 128 --decode-workers 12 --skip-rss --n "$n")
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if python3 -c "import pytest" 2>/dev/null; then
    python3 -m pytest -q -p no:cacheprovider tests/test_model_replicas.py -k "pinned_buffer or replicas_share"
fi
for extra in "" "--decode-processes" "--model-replicas 2" "--decode-processes --model-replicas 2" \
             "--runtime compile"; do
    echo "=== embed_throughput ${common[*]} $extra"
    # shellcheck disable=SC2086
    timeout 300 python3 benchmarks/embed_throughput.py "${common[@]}" $extra 2>&1 \
        | grep -v -i -E "warn|autotune|cpp_|^ *$" | tail -12
done
