#!/usr/bin/env bash
# Build ./wheelhouse: the pure-Python wheels the device machine's image may lack (it has Python
# 3.12, jax with CUDA, flax, orbax-checkpoint, optax; no hydra-core and no network). Versions are
# pinned to this checkout's environment; every wheel is py3-none-any, so one built here installs
# there. scripts/device_check.sh installs only the ones whose module is missing. (~1 MB)
#   scripts/make_wheelhouse.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
pins=$("$PY" - <<'PY'
from importlib.metadata import version
names = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "packaging", "tqdm", "pytest", "pluggy", "iniconfig",
         "pygments"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
mkdir -p wheelhouse
# --no-deps: the list above is the closure we need beside the image's own packages (PyYAML and
# typing_extensions come with flax). antlr4 4.9.3 exists only as a source archive: pip builds it.
"$PY" -m pip wheel --no-deps $pins -w wheelhouse
ls -l wheelhouse
