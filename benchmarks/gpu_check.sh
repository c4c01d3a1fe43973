#!/usr/bin/env bash
# The GPU checks for what was built on a CPU-only machine, in one run of under ten minutes on one
# H100/H200 (issue 17: the data path at the hardware's speed; issues 3 and 7 before it):
#   - the CUDA-only tests: nvJPEG decode against the CPU path, a job decoding on the GPU, the
#     per-thread pinned buffers;
#   - the feeding benchmark's default mode on the GPU machine's cores (the model a zero model);
#   - ViT-B/32 fp16 from 640x480 JPEGs end to end (target >= 5,000 img/s, GPU busy >= 50 %):
#     JPEGs decoded on the GPU (nvJPEG, the default there), then by the CPU's decode processes,
#     then with two model replicas.
# Prints each table; record them in docs/benchmarks.md with the card's name.
#
#     bash benchmarks/gpu_wheels.sh                 # here, once: the wheels the GPU machine lacks
#     bash benchmarks/gpu_check.sh [N]              # there, carrying bench_wheels; N JPEGs (4000)
set -u
n=${1:-4000}
cd "$(dirname "$0")/.."
if [ -d bench_wheels ]; then  # Python 3.12 there, no package index: install what was carried
    python3 -m pip install --quiet --no-index --no-deps --target /tmp/site bench_wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src:${PYTHONPATH:-}"
else
    export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nproc
if python3 -c "import pytest" 2>/dev/null; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_decode.py \
        tests/test_model_replicas.py -k "nvjpeg or gpu or pinned_buffer or replicas_share"
fi
echo "=== feed_ceiling (default mode, zero model)"
timeout 120 python3 benchmarks/feed_ceiling.py --n "$n" --rounds 1 --modes default 2>&1 | tail -4
common=(--device cuda --precision fp16 --batch-size 256 --skip-rss --n "$n")
for extra in "" "--decode-device cpu" "--model-replicas 2"; do
    echo "=== embed_throughput ${common[*]} $extra"
    # shellcheck disable=SC2086
    timeout 150 python3 benchmarks/embed_throughput.py "${common[@]}" $extra 2>&1 \
        | grep -v -i -E "warn|autotune|cpp_|^ *$" | tail -10
done
