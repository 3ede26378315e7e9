# The two commands of the README: `make demo` runs the main job, `make test` the whole suite.
.PHONY: demo test bootstrap

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/kernel-fx demo

test: bootstrap
	.venv/bin/python -m pytest
