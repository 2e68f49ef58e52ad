"""Registry: the MLflow model registry. Logging the served model and backbones, versions,
tags and aliases (`versions`), the champion's history of moves, the registry lock that
serialises them across processes (`lease`), the served pyfunc (`serving`,
`serving_model`, `runtimes`: what travels with every model), checked exports (`export`),
reproducing a registered version. Imports
`core`, `data`, `evaluation`, `models`."""
