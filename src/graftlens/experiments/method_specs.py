"""Recipe parts for the activation-level methods: what one configuration does, and the sweeps
that generate them.

- ``knockout``: block attention edges from ``targets`` to ``sources`` in a window of layers
  centred on each layer (Geva et al.); scored against a plain ``baseline`` configuration.
- ``lens``: project a stream point (``attn_out``, ``mlp_out``, ``resid_post``, ...) of each
  layer, at one position per prompt, to the vocabulary (extraction events, attribute rate).
- ``cmap``: patch the donor's per-head activations (``z``, ``q``, ``k``, ``v``) of some layers
  and positions into the recipient, on the same prompts (Prakash et al.).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from graftlens.experiments.specbase import LayerSpec, Strict, check_position_list, check_positions, layers_label
from graftlens.interventions.points import HEAD_POINTS, STREAM_POINTS
from graftlens.models.names import layer_window

HeadPoint = Literal["z", "q", "k", "v"]
StreamPoint = Literal["resid_pre", "resid_post", "attn_out", "mlp_out"]
assert set(HeadPoint.__args__) == set(HEAD_POINTS) and set(StreamPoint.__args__) == set(STREAM_POINTS)  # type: ignore[attr-defined]


class KnockoutSpec(Strict):
    kind: Literal["knockout"] = "knockout"
    sources: str
    targets: str = "LT"
    layers: list[int]

    _positions = field_validator("sources", "targets")(check_positions)


class LensSpec(Strict):
    kind: Literal["lens"] = "lens"
    point: StreamPoint
    layer: int
    position: str = "LT"  # the last position of this selector in each prompt
    final_norm: bool = True

    _position = field_validator("position")(check_positions)


class CmapSpec(Strict):
    kind: Literal["cmap"] = "cmap"
    donor: str
    points: list[HeadPoint] = Field(["z"], min_length=1)
    layers: LayerSpec = "all"
    heads: list[int] | None = None  # None: every head
    positions: str = "all"

    _positions = field_validator("positions")(check_positions)


MethodSpec = Annotated[KnockoutSpec | LensSpec | CmapSpec, Field(discriminator="kind")]


class KnockoutSweep(Strict):
    """For each source set and each layer ℓ: block ``targets`` → source in the ``window`` layers around ℓ."""

    kind: Literal["knockout"]
    sources: dict[str, str] = Field(min_length=1)  # label → position selector
    targets: str = "LT"
    window: int = Field(9, ge=1)
    baseline: str  # a configuration without interventions, the denominator of the relative change
    recipient: str | None = None
    group: str = "knockout"

    _targets = field_validator("targets")(check_positions)

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict[str, str]) -> dict[str, str]:
        for s in v.values():
            check_positions(s)
        return v


class LensSweep(Strict):
    """For each point and each layer: project the point at ``position`` to the vocabulary."""

    kind: Literal["lens"]
    points: list[StreamPoint] = Field(["attn_out", "mlp_out"], min_length=1)
    position: str = "LT"
    final_norm: bool = True
    recipient: str | None = None
    group: str = "lens"

    _position = field_validator("position")(check_positions)


class CmapSweep(Strict):
    """Patch the donor's ``points`` of each layer group at each position set into the recipient."""

    kind: Literal["cmap"]
    donor: str
    points: list[list[HeadPoint]] = Field([["z"]], min_length=1)
    layers: list[LayerSpec] = Field(["all"], min_length=1)
    positions: list[str] = Field(["all"], min_length=1)
    heads: list[int] | None = None
    recipient: str | None = None
    group: str = "cmap"

    _positions = field_validator("positions")(check_position_list)


def knockout_configs(sweep: KnockoutSweep, recipient: str, n_layers: int) -> list[tuple[str, dict, KnockoutSpec]]:
    """``(name, coords, spec)`` of each knockout: one per (source set, centre layer)."""
    return [
        (
            f"knockout {label} @ L{centre}",
            {"source": label, "layer": str(centre), "baseline": sweep.baseline},
            KnockoutSpec(sources=selector, targets=sweep.targets, layers=layer_window(centre, sweep.window, n_layers)),
        )
        for label, selector in sweep.sources.items()
        for centre in range(n_layers)
    ]


def lens_configs(sweep: LensSweep, n_layers: int) -> list[tuple[str, dict, LensSpec]]:
    return [
        (
            f"lens {point} @ {sweep.position} @ L{layer}",
            {"point": point, "layer": str(layer)},
            LensSpec(point=point, layer=layer, position=sweep.position, final_norm=sweep.final_norm),
        )
        for point in sweep.points
        for layer in range(n_layers)
    ]


def cmap_configs(sweep: CmapSweep) -> list[tuple[str, dict, CmapSpec]]:
    out = []
    for points in sweep.points:
        for layers in sweep.layers:
            for positions in sweep.positions:
                label = "+".join(points)
                out.append(
                    (
                        f"cmap {label} @ {layers_label(layers)} @ {positions}",
                        {"points": label, "layers": layers_label(layers), "positions": positions},
                        CmapSpec(donor=sweep.donor, points=points, layers=layers, heads=sweep.heads, positions=positions),
                    )
                )
    return out
