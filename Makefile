# The two README commands are `make demo` and `make test`; both install what they need first.
.PHONY: install install-system demo test test-fast bench clean-venv

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
