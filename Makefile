# The two commands of the README: `make demo` runs the main job, `make test` the whole suite.
# Both install the pinned versions of scripts/constraints.txt; `make test-latest` tries the newest releases.
.PHONY: demo test test-latest lint bootstrap browser

bootstrap:
	@bash scripts/bootstrap.sh

# Chromium for the browser tests of the HTML report (Debian packages; a no-op when installed).
browser:
	@bash scripts/install_chromium.sh

demo: bootstrap
	.venv/bin/kernel-fx demo

test: bootstrap browser lint
	.venv/bin/python -m pytest

lint: bootstrap
	.venv/bin/ruff check .

test-latest: browser
	@bash scripts/bootstrap.sh --latest .venv-latest
	.venv-latest/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|kernels|huggingface.hub|triton) '
	.venv-latest/bin/ruff check .
	.venv-latest/bin/python -m pytest
