# User-facing verbs. Every target bootstraps .venv on first use.
#   make demo    train + sample the embedded default (synthetic shapes, local MLflow store, CPU ok)
#   make test    run the test suite
#   make throughput-sweep   paradigm x size x batch size throughput sweep (GPU; results/throughput/)
#   make order-gifs  results/order/order_{ar,nar,par}.gif: generation order, one GIF frame per decoding step
#                    (tiny random models; ARGS="--ckpt nar=path/last.ckpt ..." for trained ones)
#   make ablation-heads   paper Tables 4/5 (heads, overlap head) as one MLflow sweep -> results/ablation_heads/
#   make cfg-sweep        FID/IS/accuracy vs CFG scale per paradigm -> results/cfg_sweep/
#   make report CONFIG=experiments/ablation_heads.yaml ARGS="--parent latest"   tables + plot from MLflow
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines get this pinned torch before anything else, so the package's torch range never
# pulls a multi-GB CUDA build; a machine that already has torch (e.g. a CUDA build) keeps it.
TORCH_CPU ?= torch==2.13.0
STAMP  := $(VENV)/.installed
CONFIG ?= experiments/demo.yaml
ARGS   ?=

.PHONY: setup demo train test lint throughput-sweep order-gifs mlflow-ui clean ablation-heads cfg-sweep report

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the torch already installed: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/nar-bench train $(CONFIG) $(ARGS)

train: demo

ablation-heads: $(STAMP)
	$(BIN)/nar-bench sweep experiments/ablation_heads.yaml $(ARGS)

cfg-sweep: $(STAMP)
	$(BIN)/nar-bench sweep experiments/cfg_sweep.yaml $(ARGS)

report: $(STAMP)
	$(BIN)/nar-bench report $(CONFIG) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check nar_bench tests

throughput-sweep: $(STAMP)
	$(BIN)/nar-bench bench experiments/throughput_sweep.yaml $(ARGS)
order-gifs: $(STAMP)
	$(BIN)/nar-bench order-gifs --out results/order $(ARGS)

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlruns.db \
		--default-artifact-root $(CURDIR)/results/mlartifacts --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) results/runs results/mlruns.db results/mlartifacts results/cache
