# sourced by device commands: installs the carried wheels, builds pycuda once per machine, installs tensorcomp
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site
if ! python3 -c "import pycuda.driver" 2>/dev/null; then
  if ls .whl/pycuda-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pycuda-*.whl
  else
    (cd /tmp && tar xzf $REPO/.whl/pycuda-2026.1.tar.gz && cd pycuda-2026.1 && \
      time python3 -m pip wheel -q --no-build-isolation --no-deps -w /tmp/pyw . > /tmp/pycuda_build.log 2>&1; \
      tail -3 /tmp/pycuda_build.log; cp /tmp/pyw/*.whl $OUT/ 2>/dev/null; \
      python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/pyw/*.whl)
  fi
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/site . > /tmp/tc_install.log 2>&1 || tail /tmp/tc_install.log
python3 -c "import llvmlite, islpy, pycuda.autoprimaryctx, pycuda.driver as d, tensorcomp; print('llvmlite', llvmlite.__version__, 'device', d.Device(0).name())"
