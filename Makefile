# User-facing verbs. Every target bootstraps .venv on first use.
#   make demo    train + sample the embedded default (synthetic shapes, local MLflow store, CPU ok)
#   make test    run the test suite (with its 15 slowest tests)
#   make test-under-load   make test while 2 x cores busy processes compete (a shared machine); pass/fail + time
#   make throughput-sweep   paradigm x size x batch size throughput sweep (GPU; eager on CPU) -> results/runs/throughput/
#   make order-gifs  results/runs/order/order_{ar,lpd,maskgit,nar,par,randar}.gif: generation order, one GIF frame per decoding step
#                    (tiny random models; ARGS="--ckpt nar=path/last.ckpt ..." for trained ones)
#   make ablation-heads   paper Tables 4/5 (heads, overlap head) as one MLflow sweep -> results/runs/ablation_heads/
#   make cfg-sweep        FID/IS/accuracy vs CFG scale per paradigm -> results/runs/cfg_sweep/
#   make ablation-order   one RandAR decoded in 5 orders x 3 step counts + AR plain / ZipAR (GPU) -> results/runs/ablation_order/
#   make report CONFIG=experiments/ablation_heads.yaml   tables + plot of the newest FINISHED sweep, from MLflow
#   make evaluate CKPT=<run .ckpt | official file> REF=<ADM reference .npz> [CONFIG=...] [ARGS="--num-samples 50000 ..."]
#                 paper-comparable FID / sFID / IS / precision / recall -> results/runs/<name>/eval.json + MLflow
#   make reference SOURCE=<image folder | YAML> REF=ref.npz [ARGS="--image-size 256"]   ADM reference batch
#   make real-photos-demo   scikit-image's photos: VQ -> codes -> NAR + AR -> reference -> evaluate (CPU ok,
#                           needs $$NAR_BENCH_INCEPTION_WEIGHTS) -> results/runs/photos-{nar,ar}/eval.json
# Verbs write to the git-ignored results/runs/; the committed results/<name>/ folders are only
# replaced with ARGS="--out results/<name> --overwrite".
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines get torch and its matching torchvision pinned in the same resolver call as the
# package, so nothing (torch-fidelity needs torchvision) can swap in a multi-GB CUDA build.
# A machine that already has torch (e.g. a CUDA build) keeps it: its version is pinned instead.
TORCH_CPU ?= torch==2.13.0 torchvision==0.28.0
STAMP  := $(VENV)/.installed
CONFIG ?= experiments/demo.yaml
ARGS   ?=

.PHONY: setup demo train test test-under-load lint throughput-sweep order-gifs mlflow-ui clean ablation-heads cfg-sweep ablation-order \
	report evaluate reference real-photos-demo

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		pin="torch==$$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		echo "using the torch already installed: $$pin"; \
		$(PYTHON) -m venv --system-site-packages $(VENV) && $(BIN)/pip install -q --no-compile "$$pin" -e ".[dev]"; \
	else \
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --no-compile $(TORCH_CPU) -e ".[dev]"; \
	fi
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	@$(BIN)/python -c "import torch; print('torch', torch.__version__)"
	$(BIN)/nar-bench train $(CONFIG) $(ARGS)

train: demo

ablation-heads: $(STAMP)
	$(BIN)/nar-bench sweep experiments/ablation_heads.yaml $(ARGS)

cfg-sweep: $(STAMP)
	$(BIN)/nar-bench sweep experiments/cfg_sweep.yaml $(ARGS)

ablation-order: $(STAMP)
	$(BIN)/nar-bench sweep experiments/ablation_order.yaml $(ARGS)

report: $(STAMP)
	$(BIN)/nar-bench report $(CONFIG) $(ARGS)

evaluate: $(STAMP)
	@test -n "$(CKPT)" -a -n "$(REF)" || { echo "usage: make evaluate CKPT=<checkpoint> REF=<reference .npz> [CONFIG=...] [ARGS=...]"; exit 2; }
	$(BIN)/nar-bench evaluate $(CONFIG) --ckpt $(CKPT) eval.reference=$(REF) $(ARGS)

reference: $(STAMP)
	@test -n "$(SOURCE)" -a -n "$(REF)" || { echo "usage: make reference SOURCE=<image folder | YAML> REF=<out .npz> [ARGS=...]"; exit 2; }
	$(BIN)/nar-bench reference $(SOURCE) --out $(REF) $(ARGS)

PHOTOS       := results/real_photos
PHOTOS_CFG   := experiments/real_photos.yaml
PHOTOS_CODES := data.name=codes data.root=$(PHOTOS)/codes tokenizer.name=codes
PHOTOS_STEPS ?= 300
PHOTOS_N     ?= 512
real-photos-demo: $(STAMP)
	rm -rf $(PHOTOS)/images $(PHOTOS)/codes
	$(BIN)/python -c "from nar_bench.data.skimage_photos import build_photo_folder as b; b('$(PHOTOS)/images', 64, 32)"
	$(BIN)/nar-bench train-tokenizer $(PHOTOS_CFG) trainer.max_steps=$(PHOTOS_STEPS) tracking.run_name=photos-vq
	$(BIN)/nar-bench extract-codes $(PHOTOS_CFG) $(PHOTOS)/codes \
		tokenizer.checkpoint=$$(ls -td results/runs/photos-vq-*/ | head -1)tokenizer.pt
	$(BIN)/nar-bench reference $(PHOTOS)/images --out $(PHOTOS)/ref.npz --image-size 32
	for p in nar ar; do \
		$(BIN)/nar-bench train $(PHOTOS_CFG) $(PHOTOS_CODES) model.paradigm=$$p trainer.max_steps=$(PHOTOS_STEPS) \
			tracking.run_name=photos-$$p && \
		$(BIN)/nar-bench evaluate $(PHOTOS_CFG) $(PHOTOS_CODES) model.paradigm=$$p --name photos-$$p --num-samples $(PHOTOS_N) \
			--ckpt $$(ls -td results/runs/photos-$$p-*/ | head -1)checkpoints/last.ckpt \
			eval.reference=$(PHOTOS)/ref.npz $(ARGS) || exit 1; \
	done

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 $(ARGS)

# ARGS (tests to select) reaches the inner `make test` through make's own command-line variables
test-under-load: $(STAMP)
	$(BIN)/python scripts/test_under_load.py

lint: $(STAMP)
	$(BIN)/ruff check nar_bench tests

throughput-sweep: $(STAMP)
	$(BIN)/nar-bench bench experiments/throughput_sweep.yaml $(ARGS)
order-gifs: $(STAMP)
	$(BIN)/nar-bench order-gifs $(ARGS)

# The web UI is the full mlflow package at exactly the installed mlflow-skinny's version (installed on
# first use): both own the same mlflow/ files, so another version would replace the tracking client.
mlflow-ui: $(STAMP)
	@$(BIN)/python scripts/install_mlflow_ui.py
	@echo "MLflow 3.18's UI opens experiments in its GenAI view until 'Model training' is chosen at the top of its" \
		"sidebar (once per browser), or use http://127.0.0.1:5000/#/experiments/<id>/runs?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlruns.db \
		--default-artifact-root $(CURDIR)/results/mlartifacts --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) results/runs results/mlruns.db results/mlartifacts results/cache
