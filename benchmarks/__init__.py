"""The framework: protocols, training loop, evaluation, runner, results store and reports."""


def registry_entry(name: str):
    """The registered model ``name`` (imports every model package once)."""
    from models.registry import get
    return get(name)
