#!/usr/bin/env bash
# The benchmark's GPU engines on a lent GPU machine, as one command of the `device` tool.
#
# That machine has its own image: python3 with PyTorch (CUDA), onnxruntime, h5py, click, tqdm and
# matplotlib, but no nltk and nothing to download from. Prepare here, in the repository root, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl nltk==3.10.4 defusedxml
#   cnm-demo                                     # runs/demo/model-best.pt, the model benchmarked
#
# then run `bash benchmarks/device_check.sh` there with carry [".whl", "runs/demo/model-best.pt"] and a
# timeout of about 7 minutes (it ran in 260 s on a 16-core H100 machine). It installs cnm without
# dependencies, remakes the demo's data (cnm-synth --default is deterministic), prints what the image's
# onnxruntime can run, and writes the benchmark's JSON, markdown and plot, and a log, to $OUT. Engines
# the image cannot run are reported as not run (an image whose onnxruntime is a CPU build still runs
# PyTorch CUDA fp32 and fp16). Batch 512 is added to the usual sizes: a GPU is far from full at 128.
# Last, cnm-run's --threads, --runs and --workers on the machine's cores (cnm_run_scale.py settings, on
# archives of random features, plain and gzip-compressed), to $OUT/settings.jsonl.
set -euo pipefail
OUT=${OUT:-/tmp/cnm-device-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1

# --target leaves the environment's own packages alone (a --prefix install would uninstall a cnm there)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cnm-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/cnm .
export PYTHONPATH="/tmp/cnm-deps:/tmp/cnm:$PWD" PATH="/tmp/cnm/bin:$PATH" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi here"
python3 - <<'PY'
import onnxruntime, torch
print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PY

cnm-synth --default -o /tmp/demo-data
python3 -m benchmarks.run --checkpoint runs/demo/model-best.pt --vocab /tmp/demo-data/glove.pkl \
    --features /tmp/demo-data/features.hdf5 --queries /tmp/demo-data/queries.jsonl \
    --batch-sizes 1,16,64,128,512 --out-dir "$OUT"

cnm-export runs/demo/model-best.pt --vocab /tmp/demo-data/glove.pkl -o /tmp/demo.onnx
python3 benchmarks/cnm_run_scale.py settings --model /tmp/demo.onnx --threads 1,2,8 --workers 0,2,8 \
    --videos 1000 --repeats 1 | tee "$OUT/settings.jsonl"
python3 benchmarks/cnm_run_scale.py settings --model /tmp/demo.onnx --threads 1 --workers 0,2,8 \
    --videos 500 --repeats 1 --compression gzip | tee -a "$OUT/settings.jsonl"
