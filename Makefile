.PHONY: demo test bench lint
demo:   ## train a real model on a standalone farm
	scripts/demo
test:   ## the whole test suite against real services
	scripts/test
lint:
	scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check .
