-- docker-compose.yml: the databases of MLflow's backend store and Prefect's server
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
