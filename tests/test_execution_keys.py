"""What a run keeps is named by typed keys: each a frozen dataclass of
``graftlens.methods.core.resources`` whose fields are what the resource depends on."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from graftlens.methods.core import resources
from graftlens.methods.core.execution import Execution


def test_a_string_or_tuple_key_is_refused() -> None:
    execution = Execution({})
    for key in ("cmap", ("head-means", "pre", 3)):
        with pytest.raises(TypeError, match="ResourceKey"):
            execution.state(key, dict)
    assert execution.state(resources.DonorActivationsStore(), dict) is execution.state(resources.DonorActivationsStore(), list)


def test_keys_with_other_fields_name_other_values() -> None:
    execution = Execution({})
    a = execution.state(resources.HeadMeans("pre", 3, 4, "test", 0, "no_box"), lambda: "three boxes")
    b = execution.state(resources.HeadMeans("pre", 7, 4, "test", 0, "no_box"), lambda: "seven boxes")
    assert (a, b) == ("three boxes", "seven boxes")
    with pytest.raises(TypeError):
        resources.HeadMeans("pre", 3)  # a field left out is an error, not a shared value


def test_every_key_is_a_frozen_dataclass() -> None:
    keys = [c for _, c in inspect.getmembers(resources, inspect.isclass) if issubclass(c, resources.ResourceKey)]
    assert len(keys) > 15
    for key in keys:
        assert dataclasses.is_dataclass(key) and key.__dataclass_params__.frozen, key.__name__
        assert "ResourceKey" in [b.__name__ for b in key.__mro__]


def test_no_method_names_a_resource_by_a_string_or_a_tuple() -> None:
    """Every ``execution.state(...)`` and ``for_batch(...)`` call in src passes a key made from
    `resources` (checked on the source, so a call no test reaches is covered too)."""
    import ast
    from pathlib import Path

    root = Path(resources.__file__).parents[2]
    wrong = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("state", "for_batch"):
                key = node.args[0] if node.args else None
                if isinstance(key, ast.Constant | ast.Tuple | ast.JoinedStr):
                    wrong.append(f"{path.relative_to(root)}:{node.lineno}")
    assert wrong == []
