"""Where the bf16 graph engine's shards stop being split-invariant: codes and images of shard 0
(64 samples, micro-batch 48) from engines built one after another in one process and from fresh
processes, compared byte for byte.
    python results/evaluate_speed/diag/diag_invariance.py OUT_DIR            # the whole diagnosis
    python results/evaluate_speed/diag/diag_invariance.py OUT_DIR child F     # one fresh engine -> F
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from nar_bench.nn.sampling import SamplingConfig  # noqa: E402
from nar_bench.paradigms.generation import GenerationEngine  # noqa: E402
from tests.test_generation_engine import gpu_module  # noqa: E402

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)


def shard0(cfg, module):
    with torch.inference_mode():
        engine = GenerationEngine.for_evaluation(module.paradigm, module.tokenizer, SamplingConfig(**cfg.eval.sampling),
                                                 48, 16, "graph", "bf16")
        codes = engine.sample_codes(0, 64, cfg.seed, 16)
        again = engine.sample_codes(0, 64, cfg.seed, 16)
        images = engine.decode(codes)
    return {"codes": codes.cpu(), "again": again.cpu(), "images": images.cpu()}


def compare(a, b, what):
    line = {"pair": what,
            "codes_equal": torch.equal(a["codes"], b["codes"]),
            "codes_differ": int((a["codes"] != b["codes"]).sum()),
            "rows_differ": int((a["codes"] != b["codes"]).flatten(1).any(1).sum()),
            "images_equal": torch.equal(a["images"], b["images"])}
    if line["codes_equal"] and not line["images_equal"]:
        line["images_max_diff"] = int((a["images"].int() - b["images"].int()).abs().max())
    print(json.dumps(line), flush=True)
    (OUT / "invariance.jsonl").open("a").write(json.dumps(line) + "\n")


if len(sys.argv) > 2 and sys.argv[2] == "child":
    cfg, module = gpu_module()
    module.cuda()
    torch.save(shard0(cfg, module), sys.argv[3])
    sys.exit(0)

env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
for name in ("p1", "p2"):
    subprocess.run([sys.executable, __file__, str(OUT), "child", f"/tmp/{name}.pt"], check=True, env=env)
p1, p2 = torch.load("/tmp/p1.pt"), torch.load("/tmp/p2.pt")
compare(p1, p2, "fresh process 1 vs fresh process 2")
compare(p1, {**p1, "codes": p1["again"]}, "process 1: same engine, second replay")
cfg, module = gpu_module()
module.cuda()
first = shard0(cfg, module)
second = shard0(cfg, module)
third = shard0(cfg, module)
compare(p1, first, "fresh process vs first engine of this process")
compare(first, second, "first vs second engine in one process")
compare(second, third, "second vs third engine in one process")
torch._dynamo.reset()
after_reset = shard0(cfg, module)
compare(first, after_reset, "first engine vs an engine after torch._dynamo.reset()")
