# The two README commands are `make demo` and `make test`; both install what they need first.
.PHONY: install install-system demo demo-models test test-fast bench clean-venv

PY := .venv/bin/python
PYTEST_ARGS ?=
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

install:
	@bash cluster/install.sh

install-system:
	@bash cluster/install_system.sh

# The main job on its embedded default: local Ray, bundled synthetic data.
demo: install
	@.venv/bin/rvos-ray demo

# The demo's three models, trained on the synthetic train split by the project's own commands, then
# copied into the package (rvos_ray/assets/demo/) with MANIFEST.json (command, config, seed, sha256).
# About an hour on a shared 2-core CPU; configs in configs/demo_models/.
DEMO_RUNS := runs/demo-models
DEMO_SEG_ITERS := 600
RVOS := .venv/bin/rvos-ray
demo-models: install
	$(RVOS) make-shapes --out data/demo-train --videos 40 --seed 0
	nice -n 5 $(RVOS) finetune-segmenter --config configs/demo_models/condinst_demo.py \
	    --data-root data/demo-train --work-dir $(DEMO_RUNS)/segmenter --max-iters $(DEMO_SEG_ITERS) \
	    --seed 0 --threads 1 --num-workers 0
	nice -n 5 $(RVOS) train-propagator --config configs/demo_models/cfbi_demo.yaml
	$(PY) -m rvos_ray.demo_models visual-init --out $(DEMO_RUNS)/visual_resnet18.pt \
	    --model resnet18 --out-index 2 --seed 0
	@# both variants read the same frozen encoders: the second reuses the first's feature cache;
	@# not niced here: the training runs in Ray workers, which Ray starts at niceness 15
	$(RVOS) train-grounder --config configs/demo_models/grounders.yaml --variant r18s2-minilm \
	    train_grounder.out_dir=$(abspath $(DEMO_RUNS))/grounders
	$(RVOS) train-grounder --config configs/demo_models/grounders.yaml --variant r18s2-minilm-d96 \
	    train_grounder.out_dir=$(abspath $(DEMO_RUNS))/grounders
	$(PY) -m rvos_ray.demo_models package --runs $(DEMO_RUNS) --out rvos_ray/assets/demo \
	    --grounders r18s2-minilm r18s2-minilm-d96 --seg-iters $(DEMO_SEG_ITERS)

# The whole suite (exits non-zero on failures and on "no tests collected").
test: install install-system
	@$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (no slow, no ray).
test-fast: install
	@$(PY) -m pytest -m "not slow and not ray" $(PYTEST_ARGS)

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf .venv "$${RVOS_CACHE:-$$HOME/.cache/rvos-ray}/venv"
