# The two commands: `make demo` (the main job, end to end) and `make test`.
# Each creates .venv (when missing or older than pyproject.toml) and installs what it needs.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := artifacts/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_HOME ?= $(CURDIR)/artifacts/bentoml

.PHONY: venv lint test demo bench bento serve container container-test clean

$(STAMP): pyproject.toml
	@$(BIN)/python -c "import sys; assert sys.version_info[:2] == (3, 11)" 2>/dev/null || { rm -rf $(VENV); $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,serve,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# `spinecast evaluate` prints the recommendation table (model rule vs T-/S-learner vs oracle: capture,
# unnecessary surgery, surgery share, DR value); the full report is $(DEMO)/eval/report.md.
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/spinecast synth --n 3000 --seed 0 --out $(DEMO)/data
	$(BIN)/spinecast synth --n 1000 --seed 1 --out $(DEMO)/test
	$(BIN)/spinecast validate $(DEMO)/test/cohort.parquet --training
	$(BIN)/spinecast train --config configs/default.yaml --config configs/quickstart.yaml --data.train_path $(DEMO)/data/cohort.parquet \
		--data.test_fraction 0 --trainer.default_root_dir $(DEMO)/run --trainer.logger.init_args.save_dir $(DEMO)/run
	$(BIN)/spinecast evaluate --ckpt $$(ls -d $(DEMO)/run/lightning_logs/version_*/checkpoints/best.ckpt | tail -1) \
		--data $(DEMO)/test/cohort.parquet --baselines-train $(DEMO)/data/cohort.parquet --out $(DEMO)/eval
	$(BIN)/spinecast export --ckpt $$(ls -d $(DEMO)/run/lightning_logs/version_*/checkpoints/best.ckpt | tail -1) \
		--out $(DEMO)/bundle --optimize --bentoml --model-card $(DEMO)/eval/MODEL_CARD.md
	$(BIN)/spinecast predict --model $(DEMO)/bundle --in $(DEMO)/test/cohort.parquet --out $(DEMO)/predictions.parquet
	@$(BIN)/python -c "import pandas as pd; print(pd.read_parquet('$(DEMO)/predictions.parquet').iloc[:3, :8].to_string())"
	$(BIN)/python -m tools.demo --cohort $(DEMO)/test/cohort.parquet

# Hours on 2 CPU cores: the accuracy and distillation benchmarks train the default model, and the
# 1,000,000-patient scoring run takes its time.
bench: $(STAMP)
	$(BIN)/python benchmarks/synth_speed.py --repeats 2
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/http_service.py --variant fp32
	$(BIN)/python benchmarks/http_service.py --variant int8
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/distill.py
	$(BIN)/python benchmarks/http_service.py --bundle artifacts/bench/student --name distilled
	$(BIN)/python benchmarks/scale.py

# The Bento from the serving code and `spinecast:latest` in $(BENTOML_HOME) (`spinecast export --bentoml`).
bento: $(STAMP)
	$(BIN)/python -m tools.bento

# The OCI image, built with buildah (no Docker engine), from the Bento of `make bento`.
container: $(STAMP)
	$(BIN)/python -m tools.container build --out benchmarks/results/container.json

# Builds the Bento and the image of a tiny model and calls /predict inside it (minutes, root; `make test` runs it too).
container-test: $(STAMP)
	$(BIN)/pytest -m container

serve: $(STAMP)
	$(BIN)/bentoml serve spinecast.serving.service:SpineCast --port 3000

clean:
	rm -rf artifacts .pytest_cache
