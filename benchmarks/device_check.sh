#!/usr/bin/env bash
# Every GPU figure of the project, as prepared commands of the `device` tool (an H200 machine: 16 cores,
# CUDA 13, PyTorch cu130, a CPU-only onnxruntime 1.30.0, no network, 64 MiB uploads a call).
#
# The ONNX Runtime CUDA kit (56 MiB, ../shared/tools/ort-cuda-kit) and the repository together pass the
# 64 MiB a call may carry, so the kit travels in two calls: the machine stays warm 30 s after a call, and
# /tmp keeps what the first call left. Prepare here, in the repository root, once:
#
#   printf '/gpu_kit/\n/gpu_carry/\n' >> .git/info/exclude
#   bash ../shared/tools/ort-cuda-kit/make_kit.sh gpu_kit 1.30.0 cp312 90
#   bash benchmarks/device_check.sh prepare      # splits the kit, gathers what the second call carries
#
# then, on the device tool, two calls in a row (the second within 30 s of the first's answer):
#
#   run  command "bash benchmarks/device_check.sh receive"  carry ["gpu_carry/kit1"]            timeout 120
#   run  command "bash benchmarks/device_check.sh run"      carry ["gpu_carry/kit2", "gpu_carry/inputs"]
#                                                                                              timeout 540
#
# `run` writes to $OUT: the benchmark of the demo model and of the original Charades config (d=256, 3+3
# layers; untrained weights, speed only) with the GPU engines (PyTorch CUDA fp32/fp16, ONNX Runtime CUDA
# fp32/fp16; TensorRT's libraries are not on PyPI, so its engine reports why it did not run), cnm-run on the
# GPU with feed processes, the feed alone by feed processes, and two epochs of cnm-train --device cuda beside
# the same on the CPU, and benchmarks.features where PyAV and transformers are there. Copy $OUT's JSON into
# benchmarks/results/gpu/ (features/ into benchmarks/results/features/) and run python -m benchmarks.readme.
#
# QUICK=1 bash benchmarks/device_check.sh run    tries the whole sequence here, on the CPU, at tiny sizes.
set -euo pipefail
STEP=${1:?prepare, receive or run}
OUT=${OUT:-/tmp/cnm-device-out}
KIT_PARTS=/tmp/cnm-kit-parts
SHARED=${SHARED:-../shared}

prepare() {
    rm -rf gpu_carry && mkdir -p gpu_carry/kit1 gpu_carry/kit2 gpu_carry/inputs/.whl
    split -b 40M gpu_kit/providers_cuda.so.xz gpu_carry/kit1/providers_cuda.so.xz.part-  # the rest goes below
    mv gpu_carry/kit1/providers_cuda.so.xz.part-a[b-z] gpu_carry/kit2/
    cp gpu_kit/ort_py.tar.xz gpu_kit/pybind.so.xz gpu_kit/providers_shared.so.xz gpu_kit/MANIFEST gpu_carry/kit2/
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d gpu_carry/inputs/.whl nltk==3.10.4
    cp "$SHARED/data/charades/test.json" "$SHARED/data/charades/glove.pkl" gpu_carry/inputs/
    du -sh gpu_carry/* && git ls-files -z | xargs -0 du -cb | tail -1
}

receive() {  # the first call: keep the kit's first part in /tmp for the second
    mkdir -p "$KIT_PARTS" && cp gpu_carry/kit1/* "$KIT_PARTS"/ && ls -l "$KIT_PARTS"
}

unpack_kit() {  # the kit's onnxruntime-gpu into /tmp/ortgpu, as ort-cuda-kit's check_on_gpu.sh does it
    cp gpu_carry/kit2/* "$KIT_PARTS"/
    cat "$KIT_PARTS"/providers_cuda.so.xz.part-* > "$KIT_PARTS/providers_cuda.so.xz"
    rm -rf /tmp/ortgpu && mkdir -p /tmp/ortgpu
    python3 - "$KIT_PARTS" /tmp/ortgpu <<'PY'
import lzma, shutil, sys, tarfile
kit, out = sys.argv[1:3]
with lzma.open(f"{kit}/ort_py.tar.xz") as packed, tarfile.open(fileobj=packed) as tar:
    tar.extractall(out)
capi = f"{out}/onnxruntime/capi"
pybind = open(f"{kit}/MANIFEST").readline().strip()
for source, target in [("pybind.so.xz", pybind), ("providers_cuda.so.xz", "libonnxruntime_providers_cuda.so"),
                       ("providers_shared.so.xz", "libonnxruntime_providers_shared.so")]:
    with lzma.open(f"{kit}/{source}") as packed, open(f"{capi}/{target}", "wb") as unpacked:
        shutil.copyfileobj(packed, unpacked, 1 << 24)
PY
    # the image's CUDA 13 and cuDNN 9 libraries (its nvidia-* pip packages), for every process started below
    LD_LIBRARY_PATH=$(python3 -c 'import glob, site; print(":".join(d for s in site.getsitepackages() for d in glob.glob(s + "/nvidia/*/lib")))'):${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
    export PYTHONPATH="/tmp/ortgpu:$PYTHONPATH"
}

run() {
    mkdir -p "$OUT"
    exec > >(tee "$OUT/device_check.log") 2>&1
    local inputs=gpu_carry/inputs quick=${QUICK:-} bench=(--rounds 3) sizes=1,64,128,512 epochs=2
    [ -n "$quick" ] && inputs=$SHARED/data/charades && bench=(--quick) && sizes=1,4 && epochs=1
    if [ -z "$quick" ]; then  # there: install cnm (its one missing dependency, nltk, travels as a wheel)
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cnm-deps "$inputs"/.whl/*.whl
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/cnm .
        export PYTHONPATH="/tmp/cnm-deps:/tmp/cnm:$PWD" PATH="/tmp/cnm/bin:$PATH"
        unpack_kit
    fi
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi here"
    python3 -c 'import onnxruntime, torch; print("torch", torch.__version__, torch.cuda.is_available());
print("onnxruntime", onnxruntime.__version__, onnxruntime.__file__, onnxruntime.get_available_providers())' || true

    local work=/tmp/cnm-device && mkdir -p "$work"
    cnm-synth --default -o "$work/demo" >/dev/null
    python3 -m benchmarks.untrained --config default --vocab "$work/demo/glove.pkl" -o "$work/demo.pt"
    python3 -m benchmarks.run "${bench[@]}" --checkpoint "$work/demo.pt" --vocab "$work/demo/glove.pkl" \
        --features "$work/demo/features.hdf5" --queries "$work/demo/queries.jsonl" --batch-sizes "$sizes" \
        --out-dir "$OUT/demo"

    cnm-synth --annotations "$inputs/test.json" --glove "$inputs/glove.pkl" --vocab-cap 1111 \
        -o "$work/charades.hdf5" >/dev/null
    python3 -m benchmarks.untrained --config charades_i3d --vocab "$inputs/glove.pkl" -o "$work/charades.pt"
    python3 -m benchmarks.run "${bench[@]}" --checkpoint "$work/charades.pt" --features "$work/charades.hdf5" \
        --queries "$inputs/test.json" --batch-sizes "$sizes" --out-dir "$OUT/charades-config"

    for device in cuda cpu; do  # the default config on the demo's data, seconds per batch in metrics.json
        cnm-train --device "$device" --epochs "$epochs" --tag "$device" --num-workers 2 \
            --set "dataset.feature_path=$work/demo/features.hdf5" --set "dataset.vocab_path=$work/demo/glove.pkl" \
            --set "dataset.train_data=$work/demo/train.json" --set "dataset.val_data=$work/demo/val.json" \
            --set "dataset.test_data=$work/demo/test.json" --set "train.model_saved_path=$work/train" \
            || echo "cnm-train --device $device failed"
        cp "$work/train/$device/metrics.json" "$OUT/train-$device.json" || true
    done

    # cnm-features with the backbone in fp16 on the GPU and decoding processes on the cores; it needs PyAV and
    # transformers there (wheels to carry in gpu_carry/inputs/.whl where the image lacks them)
    if python3 -c "import av, transformers" 2>/dev/null; then
        python3 -m benchmarks.features ${quick:+--quick} --workers 0,4,8 --out-dir "$OUT/features"
    else
        echo "benchmarks.features not run: no PyAV or transformers on this machine"
    fi
}

case "$STEP" in
    prepare) prepare ;;
    receive) receive ;;
    run) run ;;
    *) echo "unknown step $STEP: prepare, receive or run" >&2; exit 2 ;;
esac
