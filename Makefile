.PHONY: demo test bench lint

demo:  ## run the main job on the embedded defaults
	scripts/demo.sh

test:  ## lint + every test (unit and end-to-end)
	scripts/test.sh

bench:  ## transfer-learning benchmark -> bench/results/
	scripts/setup.sh && .venv/bin/python -m bench.transfer

lint:
	scripts/setup.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .
