# streamrec: `make help` lists the targets. Every target installs what it needs (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint bench eval kafka-start kafka-stop kafka-status clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: ## Create .venv, install pinned packages (CPU or GPU torch/fbgemm variant) and the Kafka jars
	@bash deploy/setup.sh

demo: setup ## Run the whole pipeline locally (Kafka, worker, trainer, serving) with live progress: MovieLens-100K, or DATA=log.csv MAP=mapping.toml; DISTILL=1: teacher + student
	@$(PY) -m deploy demo $(if $(DATA),--data "$(DATA)") $(if $(MAP),--map "$(MAP)") $(if $(DISTILL),--distill)

test: setup ## Run the whole CPU test suite (real Kafka broker included)
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## ruff + mypy
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy streaming model trainer serving kernels deploy

bench: setup ## Benchmarks (throughput, latency, ratios); results are printed and written to reports/bench/
	@$(PY) -m deploy bench

eval: setup ## Quality suites (main, unified, scaling, ablations, distill) into docs/results/quality.json, then docs/results.md (hours on a CPU)
	@$(PY) -m trainer.quality --suite main --presets eval-ml100k,eval-ml1m,small,medium,large
	@$(PY) -m trainer.quality --suite unified
	@$(PY) -m trainer.quality --suite scaling --limit-targets 300000
	@$(PY) -m trainer.quality --suite ablations --limit-targets 300000
	@$(PY) -m trainer.quality --suite distill --limit-targets 300000
	@$(PY) -m deploy results

kafka-start: setup ## Start the local Kafka broker on 127.0.0.1:9092, keeping its data (PORT=... to change, FRESH=1 wipes)
	@$(PY) -m deploy kafka start --port $${PORT:-9092} $${FRESH:+--fresh}

kafka-stop: ## Stop the local Kafka broker (its data is kept)
	@$(PY) -m deploy kafka stop

kafka-status: ## Show the local Kafka broker's status
	@$(PY) -m deploy kafka status || [ $$? -eq 3 ]  # 3 = not running: a status, not a failure

clean: ## Remove caches, run outputs and the local broker's data (keeps .venv and downloaded jars)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis reports runs snapshots checkpoints .cache/kafka-broker/data
