"""The harness around the models: ``core`` (protocols, trainer, evaluation), ``run`` (jobs, runner,
store, model discovery), ``report`` (tables, statistics, figures) and ``experiments`` (fidelity
and cost scripts).

    from benchmarks import run_experiment     # one call: models, datasets, protocols, seeds -> records
"""


def __getattr__(name: str):
    # Imported on first use: ``import benchmarks.report.writer`` must not load torch and every model.
    if name == "run_experiment":
        from benchmarks.experiment import run_experiment
        return run_experiment
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
