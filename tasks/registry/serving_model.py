"""MLflow "models from code" entry for the served classifier: the file MLflow stores with
the model and runs at load time (no pickled Python object in the model)."""

import mlflow

from tasks.registry.serving import Classifier

mlflow.models.set_model(Classifier())
