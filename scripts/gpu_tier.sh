#!/usr/bin/env bash
# The GPU tier: the tests marked `gpu`, on a machine with an NVIDIA GPU (a lent GPU machine, or any GPU
# node). Packages that machine lacks travel as wheels in .whl/ (not in git; `pip download` / `pip wheel`
# for the machine's Python and platform): each is installed into /tmp/site unless the machine already has
# that version or a newer one. Then the machine and the versions that matter are printed and the GPU test
# files run; skipped tests fail the run. With $OUT set, the whole log goes to $OUT/gpu_tier.log and a JUnit
# report to $OUT/gpu_tier.junit.xml.
#
# Usage: bash scripts/gpu_tier.sh [extra pytest arguments]
# Environment: PYTHON (default python3), GPU_TIER_TIMEOUT_S (the whole pytest run, default 360),
#   GPU_TIER_TEST_TIMEOUT_S (one test, default 240),
#   GPU_TIER_COMMAND: a bash command line to run instead of pytest, after the same installation and machine
#     report, with the same environment (PYTHONPATH, $PYTHON) and time limit; its exit status is the run's.
#     E.g. GPU_TIER_COMMAND='python3 scripts/gpu_planner_sweep.py' bash scripts/gpu_tier.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
SITE_DIR=/tmp/site
TESTS=(tests/monitor/test_fake_nvml.py tests/node/test_train_gpu.py tests/infer/test_infer_gpu.py)

install_wheels() {
  shopt -s nullglob
  local all=(.whl/*.whl) wanted=()
  shopt -u nullglob
  if [ "${#all[@]}" -eq 0 ]; then
    echo "== no wheels in .whl/: using what is installed"
    return 0
  fi
  # Only what is missing or older here: never a second numpy, torch or typing_extensions beside the
  # machine's own when it has a recent enough one.
  mapfile -t wanted < <("$PY" - "${all[@]}" <<'EOF'
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.utils import parse_wheel_filename
from packaging.version import Version

for wheel in sys.argv[1:]:
    name, version, _, _ = parse_wheel_filename(Path(wheel).name)
    try:
        have = Version(md.version(name))
    except md.PackageNotFoundError:
        print(wheel)
        continue
    if have < version:
        print(wheel)
        print(f"   {name}: {have} here, installing {version}", file=sys.stderr)
    else:
        print(f"   {name}: {have} here, not installing {version}", file=sys.stderr)
EOF
  )
  echo "== installing ${#wanted[@]} of ${#all[@]} carried wheels into $SITE_DIR"
  if [ "${#wanted[@]}" -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE_DIR" \
      "${wanted[@]}"
    export PYTHONPATH="$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

report_machine() {
  echo "== machine"
  nvidia-smi || echo "nvidia-smi failed"
  if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "no nvcc on PATH"; fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  ldconfig -p 2>/dev/null | grep -E 'libnvidia-ml|libcuda\.so' || echo "ldconfig lists no NVML/libcuda"
  echo "== versions"
  "$PY" - <<'EOF'
import importlib.metadata as md
import sys

import torch

print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: the GPU tier cannot run here")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i}", torch.cuda.get_device_name(i), "capability", torch.cuda.get_device_capability(i),
          "bf16", torch.cuda.is_bf16_supported())
try:
    print("nccl", torch.cuda.nccl.version())
except Exception as exc:  # a torch built without NCCL
    print("nccl:", type(exc).__name__, exc)
for dist in ("deepspeed", "transformers", "tokenizers", "zarr", "numcodecs", "numpy", "pydantic", "nvidia-ml-py",
             "pyarrow", "typing_extensions", "pytest", "pytest-timeout"):
    try:
        print(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist} MISSING")
import deepspeed  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

print("deepspeed", deepspeed.__version__, "from", deepspeed.__file__, "accelerator", get_accelerator()._name)
try:  # whether DeepSpeed could JIT-build an op here at all (the tests need none)
    from deepspeed.ops.op_builder.builder import assert_no_cuda_mismatch, installed_cuda_version

    print("deepspeed sees nvcc", installed_cuda_version(), "matching torch:", assert_no_cuda_mismatch())
except Exception as exc:
    print("deepspeed op builder check:", type(exc).__name__, exc)
import hpc_aidc  # noqa: E402

print("hpc_aidc from", hpc_aidc.__file__)
EOF
}

main() {
  echo "== GPU tier at $(date -u +%FT%TZ) in $ROOT"
  install_wheels
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
  # Nothing is downloaded (models are local); NCCL's warnings land in the ranks' logs a failure shows.
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  # Our training config uses torch's AdamW (no DeepSpeed op to build). Should anything JIT-build anyway:
  # for this GPU only, into a fresh folder listed at the end, without DeepSpeed's CUDA version refusal.
  export DS_SKIP_CUDA_CHECK=1
  TORCH_EXTENSIONS_DIR="$(mktemp -d /tmp/torch-extensions.XXXXXX)"
  export TORCH_EXTENSIONS_DIR
  report_machine
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
    export TORCH_CUDA_ARCH_LIST
  fi

  local junit args rc=0 what=pytest
  junit="${OUT:-/tmp}/gpu_tier.junit.xml"
  if [ -n "${GPU_TIER_COMMAND:-}" ]; then
    what=GPU_TIER_COMMAND
    export PYTHON="$PY"
    echo "== GPU_TIER_COMMAND: $GPU_TIER_COMMAND"
    timeout --signal=TERM --kill-after=15 "${GPU_TIER_TIMEOUT_S:-360}" bash -c "$GPU_TIER_COMMAND" || rc=$?
  else
    args=(-m gpu -p no:cacheprovider -q -rA --timeout="${GPU_TIER_TEST_TIMEOUT_S:-240}" --junitxml="$junit")
    echo "== pytest ${args[*]} ${TESTS[*]} $*"
    timeout --signal=TERM --kill-after=15 "${GPU_TIER_TIMEOUT_S:-360}" \
      "$PY" -m pytest "${args[@]}" "${TESTS[@]}" "$@" || rc=$?
  fi

  echo "== ops DeepSpeed JIT-built during the run:"
  find "$TORCH_EXTENSIONS_DIR" -name '*.so' -printf '   %P\n' | grep . || echo "   none"
  if [ "$rc" -eq 124 ]; then
    echo "$what did not finish within ${GPU_TIER_TIMEOUT_S:-360} s" >&2
  elif [ "$what" = GPU_TIER_COMMAND ]; then
    :  # its own exit status
  elif [ "$rc" -eq 5 ]; then
    echo "pytest collected no GPU tests: failing, a run that tests nothing must not pass" >&2
    rc=1
  elif [ "$rc" -eq 0 ] && [ -f "$junit" ] && grep -q '<skipped' "$junit"; then
    echo "some GPU tests were skipped on a GPU machine: failing (see the summary above)" >&2
    rc=1
  fi
  echo "== GPU tier exit status $rc at $(date -u +%FT%TZ)"
  return "$rc"
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  main "$@" 2>&1 | tee "$OUT/gpu_tier.log"
else
  main "$@"
fi
