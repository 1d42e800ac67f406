"""weather-retrain: the pipeline's library. Pure Python; never imports Airflow.

One module per stage: ingest (with validate, label, split), data, models, train,
evaluate, registry, serving; one config object (config) and one CLI (cli).
"""

__version__ = "0.1.0"
