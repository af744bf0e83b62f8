#!/usr/bin/env bash
# The wheels bench/gpu.sh needs on the GPU machine (Python 3.12, no network), downloaded here into .whl/ (ignored by
# git; the device tool carries it with carry: [".whl"]). Training needs webdataset and its braceexpand, nothing
# else the machine lacks: tracking=none there, and cluster.backend=auto uses torch k-means without faiss.
#
#   bash bench/gpu_wheels.sh && ls .whl
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl "webdataset>=0.2.86,<2" "braceexpand>=0.1.7"
ls -l .whl
