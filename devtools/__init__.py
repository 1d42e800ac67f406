"""weather-retrain devtools: the unshipped development package.

The demo (``weather demo``, registered as a ``weather.commands`` entry point), the local
stand-ins for the production services (``local_services``), the one runner of a DAG night
(``night``), synthetic scenes (``scenes``) and the test corpora (``corpus``, ``netproxy``).
Never imported by ``weather_tasks``, ``dags`` or ``plugins``; never in a production image.
"""
