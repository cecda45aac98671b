"""The harness around the models: ``core`` (protocols, trainer, evaluation), ``run`` (jobs, runner,
store), ``report`` (tables, statistics, figures) and ``experiments`` (fidelity and cost scripts)."""


def registry_entry(name: str):
    """The registered model ``name``, every model package imported (``benchmarks.run.discovery``)."""
    from benchmarks.run.discovery import registry_entry as entry
    return entry(name)
