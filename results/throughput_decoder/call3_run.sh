#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=$OUT; nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt
timeout 90 python3 -m pytest -q -m cuda -p no:cacheprovider --tb=short tests/test_group_norm.py tests/test_fast_vae_decode.py > $R/cudatests.txt 2>&1; tail -1 $R/cudatests.txt
for v in "var 0 old default" "var 0 new default"; do
  timeout 45 python3 scratch/dec_ab2.py $R $v 256 > /dev/null 2>>$R/dec_ab2.err; grep img/s $R/dec_ab2.txt | tail -1
done
timeout 70 python3 scratch/gn_bench.py $R > $R/gn_bench.log 2>&1; tail -2 $R/gn_bench.txt
for v in "vq 1 inductor default" "vq 1 new best"; do
  timeout 50 python3 scratch/dec_ab2.py $R $v 256 > /dev/null 2>>$R/dec_ab2.err; grep img/s $R/dec_ab2.txt | tail -1
done
