#!/usr/bin/env bash
# The CUDA path in one command, on a machine with a GPU (a few minutes; see
# benchmarks/gpu_check.py for what each line checks). One line per check;
# exit status non-zero if any check fails or no GPU is seen.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # cmbscat importable without an install
"$PYTHON" -c "import torch; print('# torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
