"""nar-bench CLI with the decode attention tile for <=16-row query blocks set by $TILE (e.g. 64,1,2)."""
import os, runpy, sys
from nar_bench.nn import fused_decode as fd
if os.environ.get("TILE"):
    small = tuple(int(v) for v in os.environ["TILE"].split(","))
    fd.attention_tile = lambda block_m: small if block_m <= 16 else (64, 4, 2)
sys.argv = ["nar-bench", *sys.argv[1:]]
runpy.run_module("nar_bench.cli", run_name="__main__")
