#!/usr/bin/env bash
# The wheels the lent GPU machines lack (Python 3.12, no package index there), downloaded here
# into bench_wheels/ (git-ignored) at the versions in constraints.txt; gpu_check.sh installs them
# there. Carry the folder with the run: carry: ["bench_wheels"].
#
#     bash benchmarks/gpu_wheels.sh
set -eu
cd "$(dirname "$0")/.."
mkdir -p bench_wheels
pins=$(grep -i -E '^(pydantic|pydantic_core|annotated-types|typing-inspection|av|pi_heif)==' constraints.txt)
# shellcheck disable=SC2086
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest bench_wheels $pins
ls -la bench_wheels
