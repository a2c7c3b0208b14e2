#!/usr/bin/env bash
# The GPU measurements in one run, on a machine with an NVIDIA GPU, CUDA's compiler and no network.
#
#   bash bench/gpu_measure.sh --fetch PACKAGES    # beforehand, where the package index can be reached
#   bash bench/gpu_measure.sh PACKAGES RESULTS    # on the GPU machine
#
# --fetch puts into PACKAGES what such a machine may lack: islpy's wheel for its Python
# (PYTHON_VERSION, default 3.12), pycuda's source (built there, against its CUDA and driver) and the
# pure-Python packages pycuda needs. Everything else (numpy, llvmlite, torch, setuptools) is taken
# from the machine's Python.
#
# The run installs islpy, pycuda and tensorcomp (this checkout) into RESULTS/site, then runs each
# step under its own time limit, so that a failing or slow step leaves the others' results; every
# step's output goes to its own file in RESULTS (summary.txt lists each step's exit status and time):
#   gpu.txt              nvidia-smi, versions, the GPU tensorcomp sees
#   cuda_runtime.txt     tests/test_cuda_runtime.py: ops, gradients and tuning on the GPU against the CPU backend
#   capsule_gpu.txt      bench/capsule_gpu.py: the capsule kernel and its gradients beside torch (TF32
#                        off), and the forward with TF32 tensor cores on both sides
#   train_gpu.txt        bench/train.py --device cuda: CapsNet-small and LeNet-5, 3 epochs, beside torch
# Limits (seconds; override with the environment): INSTALL_S 180 (pycuda's build: ~70 s on 2 cores),
# TEST_S 90, CAPSULE_S 170 (tuning budgets 40 s forward, 15 s per gradient and for TF32), TRAIN_S 120:
# the run ends within 10 minutes, the steps' own times well inside their limits.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}

if [ "${1:-}" = "--fetch" ]; then
    dest=${2:?usage: gpu_measure.sh --fetch PACKAGES}
    mkdir -p "$dest"
    ver=${PYTHON_VERSION:-3.12}
    "$py" -m pip download --no-deps --only-binary=:all: --python-version "$ver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest" islpy pytools mako platformdirs siphash24 || exit 1
    # pycuda's source: pip cannot download it without running its configuration, which needs CUDA
    "$py" - "$dest" <<'EOF' || exit 1
import json, sys, urllib.request
info = json.load(urllib.request.urlopen("https://pypi.org/pypi/pycuda/json"))
sdist = next(u for u in info["urls"] if u["packagetype"] == "sdist")
urllib.request.urlretrieve(sdist["url"], f"{sys.argv[1]}/{sdist['filename']}")
print("fetched", sdist["filename"])
EOF
    ls -l "$dest"
    exit 0
fi

packages=$(cd "${1:?usage: gpu_measure.sh PACKAGES RESULTS}" && pwd)
results=${2:?usage: gpu_measure.sh PACKAGES RESULTS}
mkdir -p "$results"
results=$(cd "$results" && pwd)
site="$results/site"
summary="$results/summary.txt"
: > "$summary"

step() {  # step NAME LIMIT COMMAND: run it (bash), its output to RESULTS/NAME.txt, its status to the summary
    local name=$1 limit=$2 t0=$SECONDS
    timeout "$limit" bash -c "$3" > "$results/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$summary"
    return $rc
}

export PYTHONUNBUFFERED=1 PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CUDA_ROOT:-}" ]; then  # where cuda.h is: /usr/local/cuda, else beside nvcc
    CUDA_ROOT=/usr/local/cuda
    [ -e "$CUDA_ROOT/include/cuda.h" ] || CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
fi
export TENSORCOMP_CACHE_DIR="$results/cache"
# the driver library pycuda links against (libcuda.so.1 often has no unversioned name beside it)
drv=${LIBCUDA:-$(ldconfig -p 2>/dev/null | awk '/libcuda\.so/ {print $NF; exit}')}
[ -n "$drv" ] || drv=$(ls "$CUDA_ROOT"/lib64/stubs/libcuda.so 2>/dev/null)
mkdir -p "$results/cudadrv" && ln -sf "$drv" "$results/cudadrv/libcuda.so"
pip="$py -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target $site"
step install "${INSTALL_S:-180}" "set -e
$pip $packages/islpy-*.whl $packages/pytools-*.whl $packages/mako-*.whl $packages/platformdirs-*.whl $packages/siphash24-*.whl
src=\$(mktemp -d); tar xzf $packages/pycuda-*.tar.gz -C \$src; cd \$src/pycuda-*
$py configure.py --cuda-root=$CUDA_ROOT --no-cuda-enable-curand --cudadrv-lib-dir=$results/cudadrv
$pip .; cd $results
$pip $here" || { cat "$summary"; exit 1; }
cd "$results"  # (so that the checkout's own folders do not shadow the installed package)
step gpu 30 "nvidia-smi; $py -c 'import pycuda.autoinit, pycuda.driver as d, torch, tensorcomp
print(d.Context.get_device().name(), d.get_version(), torch.__version__, tensorcomp.__version__)'"
step cuda_runtime "${TEST_S:-90}" "$py -m pytest -q -p no:cacheprovider $here/tests/test_cuda_runtime.py"
step capsule_gpu "${CAPSULE_S:-170}" "$py $here/bench/capsule_gpu.py --budget 40 --grad-budget 15"
step train_gpu "${TRAIN_S:-120}" "$py $here/bench/train.py --device cuda --models capsnet-small,lenet --epochs 3"
cat "$summary"
