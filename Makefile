# Two commands do all set-up: `make demo` (the main job) and `make test`. Each creates the
# virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install sft-arith bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/maskgrpo train recipes/arith-grpo.yaml --overwrite

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# Regenerates the shipped small policy maskgrpo/checkpoints/arith-small (about 1.5 minutes here).
sft-arith: $(VENV)/.installed
	$(BIN)/maskgrpo sft recipes/arith-sft.yaml

bench: $(VENV)/.installed
	$(BIN)/python -m bench.rollout && $(BIN)/python -m bench.step && $(BIN)/python -m bench.image && $(BIN)/python -m bench.learning

clean:
	rm -rf runs .pytest_cache
