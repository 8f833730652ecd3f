# Sourced by the GPU scripts (training/train_gpu.sh, scripts/gpu_check.sh): the Python to use, $PY.
# A project machine: the project's .venv (made by scripts/setup.sh when missing). The lent GPU machine (bare
# image: python3 with torch and numpy 2, no registry, no .venv; recognised by the carried .whl/): python3, with
# the wheels of scripts/device_wheels.sh installed into /tmp/site for the packages the image lacks.
if [ ! -x .venv/bin/python ] && ls .whl/*.whl >/dev/null 2>&1; then
  PY=python3
  if ! "$PY" -c "import compressai, monai" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "installing .whl into /tmp/site failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # fedcodec is not installed there: import it from here
else
  [ -x .venv/bin/python ] || bash scripts/setup.sh
  PY=.venv/bin/python
fi
export PY
