"""What every contract suite checks of an implementation's capability classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def assert_declares_exactly(implementation: Any, capabilities: dict[type, str]) -> None:
    """`implementation` names each capability class among its bases exactly when it has the
    method the class stands for, isinstance (what the runtime asks) agrees, and a declared
    capability's method is the implementation's own, not the class's stub."""
    for capability, method in capabilities.items():
        has = callable(getattr(implementation, method, None))
        assert (capability in type(implementation).__mro__) == has, (capability.__name__, implementation)
        assert isinstance(implementation, capability) == has, (capability.__name__, implementation)
        if has:
            assert getattr(type(implementation), method) is not getattr(capability, method), method


def sequenced(frame: "pd.DataFrame", *, stamp: int = 1, shard: int = 0,
              batch: int = 0) -> "pd.DataFrame":
    """`frame` as the runtime hands it to a key-honouring sink: with each row's sequence
    (run `stamp`, shard, batch, row position)."""
    import numpy as np

    from etl.runtime.keys import with_sequence

    return with_sequence(frame, stamp=stamp, shard=shard, batch=batch, rows=np.arange(len(frame)))
