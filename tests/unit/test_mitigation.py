"""rtml.mitigation: the import path rtml 0.1 pickled mitigated models under still loads them."""

from __future__ import annotations

import pickle


def test_the_old_path_names_the_current_class():
    import rtml.mitigation as old
    from rtml.evaluate.mitigation import MitigatedModel

    assert old.MitigatedModel is MitigatedModel and old.__all__ == ["MitigatedModel"]


def test_a_pickle_that_names_the_old_module_loads_as_the_current_class():
    from rtml.evaluate.mitigation import MitigatedModel

    # The GLOBAL opcode a pickle of rtml 0.1 holds for the class: module and name, by reference.
    data = b"crtml.mitigation\nMitigatedModel\n."
    assert pickle.loads(data) is MitigatedModel
    assert pickle.loads(pickle.dumps(MitigatedModel, protocol=2)) is MitigatedModel
