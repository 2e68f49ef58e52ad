.PHONY: demo test bench lint

demo:  ## run the main job on the embedded defaults
	scripts/demo.sh

test:  ## lint + every test (unit and end-to-end)
	scripts/test.sh

bench:  ## every benchmark -> bench/results/ (hours on 2 cores: bench.transfer at its defaults, 2 tasks x 6 arms x 3 seeds x 3 label counts; its first label count alone took 90 min)
	scripts/setup.sh && .venv/bin/python -m bench.transfer && .venv/bin/python -m bench.determinism \
	  && .venv/bin/python -m bench.startup && .venv/bin/python -m bench.operations \
	  && .venv/bin/python -m bench.scale --cases 2000:32 2000:224 10000:32 \
	  && .venv/bin/python -m bench.serving && .venv/bin/python -m bench.distributed --photos 400 --repeats 3 \
	  && .venv/bin/python -m bench.texts --texts 256 --repeats 3 && .venv/bin/python -m bench.bbc_news \
	  && .venv/bin/python -m bench.text_transfer \
	  && .venv/bin/python -m bench.distill --unlabelled 6000 --name distill-transfer \
	  && .venv/bin/python -m bench.distill --unlabelled 6000 --name distill-transfer-narrow --student-width 8 \
	    --set unfreeze_layers=100 --set finetune_epochs=20 --set finetune_learning_rate=0.001

lint:
	scripts/setup.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .
