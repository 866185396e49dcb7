.PHONY: demo test bench lint
demo:   ## train a real model on a standalone farm
	scripts/demo
test:   ## the whole test suite against real services
	scripts/test
bench:  ## trainfarm against bare baselines on real services, one table (< 10 min)
	scripts/bootstrap && .venv/bin/python -m bench.run $(BENCH_ARGS)
lint:
	scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
