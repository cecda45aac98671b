"""The harness around the models: ``core`` (protocols, trainer, evaluation), ``run`` (jobs, runner,
store), ``report`` (tables, statistics, figures) and ``experiments`` (fidelity and cost scripts).

    from benchmarks import run_experiment     # one call: models, datasets, protocols, seeds -> records
    from benchmarks import registry_entry     # a registered model, every model package imported
"""


def __getattr__(name: str):
    # Imported on first use: ``import benchmarks.report.writer`` must not load torch and every model.
    if name == "run_experiment":
        from benchmarks.experiment import run_experiment
        return run_experiment
    if name == "registry_entry":
        from benchmarks.run.discovery import registry_entry
        return registry_entry
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
