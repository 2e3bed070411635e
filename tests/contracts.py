"""What every contract suite checks of an implementation's capability classes."""

from __future__ import annotations

from typing import Any


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
