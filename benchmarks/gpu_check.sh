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
# cmbscat as installed (`make install`, `pip install -e .`); on a bare GPU machine that has
# the dependencies but not the package, install it (no dependencies) into a temporary
# folder: the repository on the path would not do, since its package data (cmbscat.data)
# lives in data/. Checked without the current folder on the path, so the repository's own
# cmbscat/ does not shadow it.
if ! "$PYTHON" -c "import sys; sys.path = [p for p in sys.path if p not in ('', '.')]
import cmbscat.data" 2>/dev/null; then
    site=$(mktemp -d)
    echo "# cmbscat is not installed for $PYTHON: installing it (no dependencies) into $site"
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation --no-compile --target "$site" . \
        || { echo "FAIL install: pip could not install cmbscat into $site"; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import torch; print('# torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
