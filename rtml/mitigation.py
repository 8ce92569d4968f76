"""The import path under which rtml 0.1 pickled the fairness-mitigated model (before the package
layout). Registered versions logged then still load through it; new code imports
:mod:`rtml.evaluate.mitigation`."""

from rtml.evaluate.mitigation import MitigatedModel

__all__ = ["MitigatedModel"]
