# The two README commands are `make demo` and `make test`; both install what they need first.
.PHONY: install lock install-system demo demo-models test test-fast bench clean-venv

PY := .venv/bin/python
PYTEST_ARGS ?=
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# This clone's .venv from requirements.lock (hash-checked); the mmcv wheel is built once and cached
# in $RVOS_CACHE/wheels (default ~/.cache/rvos-ray). Fails if the lock and pyproject.toml disagree.
install:
	@bash cluster/install.sh

# Re-resolve requirements.lock after editing pyproject.toml's dependencies (UPGRADE=1: newest).
lock:
	@UPGRADE=$(UPGRADE) bash cluster/lock.sh

install-system:
	@bash cluster/install_system.sh

# The main job on its embedded default: local Ray, bundled synthetic data.
demo: install
	@.venv/bin/rvos-ray demo

# The demo's three models, trained on synthetic train splits by the project's own commands, then
# copied into the package (rvos_ray/assets/demo/) with MANIFEST.json (command, config, seed, sha256).
# The segmenter and the propagator train in legs, each continuing the last (the first legs are the
# first demo's models; the later ones were added when they proved undertrained). About 100 minutes
# on a quiet 2-core CPU; configs in configs/demo_models/.
DEMO_RUNS := runs/demo-models
RVOS := .venv/bin/rvos-ray
SEG_ARGS := --config configs/demo_models/condinst_demo.py --data-root data/demo-train --threads 1 --num-workers 0
PROP_ARGS := --config configs/demo_models/cfbi_demo.yaml
demo-models: install
	$(RVOS) make-shapes --out data/demo-train --videos 40 --seed 0
	$(RVOS) make-shapes --out data/demo-ground --videos 200 --seed 2
	nice -n 5 $(RVOS) finetune-segmenter $(SEG_ARGS) --work-dir $(DEMO_RUNS)/segmenter-600 --max-iters 600 --seed 0
	nice -n 5 $(RVOS) finetune-segmenter $(SEG_ARGS) --work-dir $(DEMO_RUNS)/segmenter --max-iters 3000 --seed 1 \
	    --load-from $(DEMO_RUNS)/segmenter-600/segmenter.pth
	@# one run in four legs: each resumes last.pt, steps=N is the leg's cosine horizon
	nice -n 5 $(RVOS) train-propagator $(PROP_ARGS) steps=260
	nice -n 5 $(RVOS) train-propagator $(PROP_ARGS) steps=1000
	nice -n 5 $(RVOS) train-propagator $(PROP_ARGS) steps=2000
	nice -n 5 $(RVOS) train-propagator $(PROP_ARGS) steps=2500
	$(PY) -m rvos_ray.demo_models visual-init --out $(DEMO_RUNS)/visual_resnet18.pt \
	    --model resnet18 --out-index 2 --seed 0
	@# the five variants read the same frozen encoders: all but the first reuse its feature cache
	@# (about 4 minutes each then); not niced here: the training runs in Ray workers, which Ray
	@# starts at niceness 15. Variant:seed pairs, as the package step records them.
	for vs in r18s2-minilm:0 r18s2-minilm-d96:0 r18s2-minilm-d64:1 r18s2-minilm-l3:2 r18s2-minilm-l1:3; do \
	  $(RVOS) train-grounder --config configs/demo_models/grounders.yaml --variant $${vs%:*} \
	    train_grounder.out_dir=$(abspath $(DEMO_RUNS))/grounders train_grounder.seed=$${vs#*:} || exit 1; \
	done
	$(PY) -m rvos_ray.demo_models package --runs $(DEMO_RUNS) --out rvos_ray/assets/demo \
	    --grounders r18s2-minilm r18s2-minilm-d96 r18s2-minilm-d64:1 r18s2-minilm-l3:2 r18s2-minilm-l1:3

# The whole suite (exits non-zero on failures and on "no tests collected").
test: install install-system
	@PYTHONFAULTHANDLER=1 $(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (no slow, no ray).
test-fast: install
	@PYTHONFAULTHANDLER=1 $(PY) -m pytest -m "not slow and not ray" $(PYTEST_ARGS)

bench: install
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# This clone's venv only; the shared caches (built mmcv wheel, pip's downloads) stay.
clean-venv:
	rm -rf .venv
