# Sourced by the GPU scripts (training/train_gpu.sh, scripts/gpu_check.sh): the Python to use, $PY.
# Here (a project machine): the project's .venv. On the lent GPU machine (bare image: python3 with torch and
# numpy 2, no registry, no .venv): python3, with the wheels of scripts/device_wheels.sh (carried as .whl)
# installed into /tmp/site for the packages the image lacks.
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  if ! "$PY" -c "import compressai, monai" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "no .venv and no .whl/: on a project machine run scripts/setup.sh; for the GPU machine run" \
           "scripts/device_wheels.sh first and carry .whl" >&2
      exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "installing .whl into /tmp/site failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # fedcodec is not installed there: import it from here
fi
export PY
