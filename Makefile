# The two commands of the README:
#   make demo   set up, generate the demo corpora, pretrain a small BEST-RQ
#               SummaryMixing Conformer on it, probe it on the seven MP3S
#               tasks (CPU, 20-27 min on 2 cores; PROBES=0 skips the probes)
#   make test   set up and run the default test suite (unit + recipes, ~12 min);
#               CI (.ci/run) runs it, then make test-slow (the slow tier)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow corpus compare evidence

setup:
	bash tools/setup_env.sh

corpus: setup
	$(PY) tools/demo_corpus.py --out demo_data

demo: corpus
	bash tools/run_demo.sh

# The five paper mixers pretrained with one budget and probed (~15 min on 2
# cores with the defaults: 6 epochs, ASR and VoxCeleb probes).
compare: corpus
	bash tools/compare_mixers.sh

# The demo over several seeds (SEEDS="1 2 3", 18-24 min each): mean ± standard
# deviation per cell; make demo's verdicts then use that spread.
evidence: corpus
	bash tools/run_evidence.sh

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow
