"""Where an evaluation's ``write_s`` goes: the sample files' disk phases on this machine, for N
random 256 px images in shards of 1,000 (``SampleStore``, the evaluation's own code):
writing the shards, assembling them into the ADM .npz, and streaming that .npz back in the
scorer's batches (``iter_images``), each in seconds and GB/s.
    python results/evaluate_speed/diag/sample_io.py OUT_DIR [N=10000] [WORK=/tmp/sample_io]
"""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from nar_bench.metrics.adm_npz import iter_images  # noqa: E402
from nar_bench.metrics.sample_store import SampleStore  # noqa: E402

OUT = Path(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
WORK = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/tmp/sample_io")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    store = SampleStore(WORK / "samples.npz", N, 1000, {})
    store.open()
    images = np.random.default_rng(0).integers(0, 256, (1000, 256, 256, 3), np.uint8)
    gigabytes = N * images[0].nbytes / 1e9
    phases = {}
    clock = time.perf_counter()
    for shard in range(store.num_shards):
        store.write_shard(shard, images[: len(store.indices(shard))], np.zeros(len(store.indices(shard)), np.int64))
    phases["write_shards"] = time.perf_counter() - clock
    clock = time.perf_counter()
    store.assemble()
    phases["assemble"] = time.perf_counter() - clock
    clock = time.perf_counter()
    for _ in iter_images(store.out, 500):
        pass
    phases["read_npz"] = time.perf_counter() - clock
    row = {"num_samples": N, "gigabytes": round(gigabytes, 2),
           **{f"{k}_s": round(v, 2) for k, v in phases.items()},
           **{f"{k}_gb_s": round(gigabytes / v, 2) for k, v in phases.items()}}
    print(json.dumps(row), flush=True)
    (OUT / "sample_io.jsonl").open("a").write(json.dumps(row) + "\n")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
