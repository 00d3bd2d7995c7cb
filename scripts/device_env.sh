# Sourced by the device-call scripts (scripts/gpu_sweep.sh, results/evaluate_speed/run.sh), from the
# repository root: installs the carried wheels (.whl/, see the device README) where every python3 sees
# them, and sets the environment every call's output records.
if [ -d .whl ]; then
  # a .pth file, not PYTHONPATH: the tests' child processes set PYTHONPATH themselves
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && echo /tmp/site > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/zz_carried.pth"
fi
export PYTHONUNBUFFERED=1 NAR_BENCH_COMMIT=${NAR_BENCH_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
