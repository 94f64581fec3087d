"""Architecture adapters: one declarative table per model family.

An adapter maps graftlens' canonical component names (see `graftlens.models.names`) to the
modules of a loaded Hugging Face model. A component is computed by one or more *sites*; a site
is a module path plus, for fused projections, the output features (rows of ``W`` in
``y = x W^T``) that belong to the component. Grafting or patching ``q`` alone on GPT-2's fused
``c_attn`` or on GPT-NeoX's per-head interleaved ``query_key_value`` uses those rows.

Adding a family means adding one `Family` table below and one tiny config in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graftlens.errors import LayerSelectionError, UnknownComponentError, UnsupportedArchitectureError
from graftlens.models.names import LAYER_COMPONENTS, MODEL_COMPONENTS, expand_components

Rows = tuple[tuple[int, int], ...]
"""Half-open intervals ``(start, stop)`` of output features, in order."""


@dataclass(frozen=True)
class Dims:
    """The sizes an adapter needs, read from a model config whatever its attribute names."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int


def rows_index(rows: Rows | None, device: torch.device | str | None = None) -> torch.Tensor | None:
    """Row intervals as a LongTensor ``[n_rows]``; None (the whole output) stays None."""
    if rows is None:
        return None
    return torch.cat([torch.arange(a, b, device=device) for a, b in rows])


@dataclass(frozen=True)
class Site:
    """One module, or some output rows of one module, that computes (part of) a component."""

    path: str
    rows: Rows | None = None

    def row_index(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The rows as a LongTensor ``[n_rows]``, or None when the site owns the whole output."""
        return rows_index(self.rows, device)

    @property
    def n_rows(self) -> int | None:
        return None if self.rows is None else sum(b - a for a, b in self.rows)


# ---- how a fused projection is split ---------------------------------------------------------


def contiguous(*parts: Callable[[Dims], int]) -> Callable[[Dims, int], Rows]:
    """Rows of part ``k`` of an output laid out as ``[part0 | part1 | ...]``."""

    def rows(dims: Dims, k: int) -> Rows:
        sizes = [p(dims) for p in parts]
        start = sum(sizes[:k])
        return ((start, start + sizes[k]),)

    return rows


def interleaved_per_head(dims: Dims, k: int) -> Rows:
    """GPT-NeoX ``query_key_value``: ``[h0 q, h0 k, h0 v | h1 q, h1 k, h1 v | ...]``."""
    d = dims.d_head
    return tuple((h * 3 * d + k * d, h * 3 * d + (k + 1) * d) for h in range(dims.n_heads))


def _q_width(d: Dims) -> int:
    return d.n_heads * d.d_head


def _kv_width(d: Dims) -> int:
    return d.n_kv_heads * d.d_head


def _d_model(d: Dims) -> int:
    return d.d_model


def _d_mlp(d: Dims) -> int:
    return d.d_mlp


@dataclass(frozen=True)
class Fused:
    """Part ``part`` of the fused projection at ``path``, split by ``split``."""

    path: str
    part: int
    split: Callable[[Dims, int], Rows]


SiteSpec = str | Fused
"""A module path (relative to a layer, or to the model for model-wide parts), or a fused part.
A path ending in ``?`` is optional: used when the model has that module with parameters."""


@dataclass(frozen=True)
class Family:
    """The declarative description of one architecture family."""

    name: str
    model_types: tuple[str, ...]
    layers: str
    per_layer: Mapping[str, tuple[SiteSpec, ...]]
    model_wide: Mapping[str, tuple[str, ...]]
    gated_mlp: bool
    notes: str = ""
    mlp_block: str = "mlp"
    """The per-layer module (relative to a layer) holding gate/up/down. Its forward must act on
    each position independently: the engine then grafts it as one block (one gather, one scatter)."""
    attn_in_norm: str | None = "input_layernorm"
    """The norm between the residual stream and the q/k/v projections (relative to a layer; None:
    the projections read the residual stream itself). Edge attribution differentiates through it."""
    attn_out_norm: str | None = None
    """The norm between the output projection and the residual stream (Gemma-2's and OLMo-2's
    ``post_attention_layernorm``; None: the projection's output is added as it is)."""


_LLAMA_ATTN = {
    "q": ("self_attn.q_proj", "self_attn.q_norm?"),
    "k": ("self_attn.k_proj", "self_attn.k_norm?"),
    "v": ("self_attn.v_proj",),
    "o": ("self_attn.o_proj",),
}
_LLAMA_MLP = {"gate": ("mlp.gate_proj",), "up": ("mlp.up_proj",), "down": ("mlp.down_proj",)}
_LLAMA_MODEL = {"embed": ("model.embed_tokens",), "ln_final": ("model.norm",), "lm_head": ("lm_head",)}

FAMILIES: tuple[Family, ...] = (
    Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "smollm3"),
        layers="model.layers",
        per_layer={
            **_LLAMA_ATTN,
            **_LLAMA_MLP,
            "ln_attn": ("input_layernorm?",),
            "ln_mlp": ("post_attention_layernorm?",),
        },
        model_wide={**_LLAMA_MODEL, "ln_final": ("model.norm?",)},
        gated_mlp=True,
        notes="pre-norm; Qwen3's q_norm/k_norm belong to q/k; OLMo-1's norms have no weights",
    ),
    Family(
        name="gemma2",
        model_types=("gemma2", "gemma3_text"),
        layers="model.layers",
        per_layer={
            **_LLAMA_ATTN,
            **_LLAMA_MLP,
            "ln_attn": ("input_layernorm", "post_attention_layernorm"),
            "ln_mlp": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
        },
        model_wide=_LLAMA_MODEL,
        gated_mlp=True,
        notes="sandwich norms: ln_attn/ln_mlp hold the norms before and after each sublayer",
        attn_out_norm="post_attention_layernorm",
    ),
    Family(
        name="olmo2",
        model_types=("olmo2",),
        layers="model.layers",
        per_layer={
            **_LLAMA_ATTN,
            **_LLAMA_MLP,
            "ln_attn": ("post_attention_layernorm",),
            "ln_mlp": ("post_feedforward_layernorm",),
        },
        model_wide=_LLAMA_MODEL,
        gated_mlp=True,
        notes="post-norm: ln_attn/ln_mlp are the norms after each sublayer; q_norm/k_norm belong to q/k",
        attn_in_norm=None,
        attn_out_norm="post_attention_layernorm",
    ),
    Family(
        name="phi3",
        model_types=("phi3",),
        layers="model.layers",
        per_layer={
            "q": (Fused("self_attn.qkv_proj", 0, contiguous(_q_width, _kv_width, _kv_width)),),
            "k": (Fused("self_attn.qkv_proj", 1, contiguous(_q_width, _kv_width, _kv_width)),),
            "v": (Fused("self_attn.qkv_proj", 2, contiguous(_q_width, _kv_width, _kv_width)),),
            "o": ("self_attn.o_proj",),
            "gate": (Fused("mlp.gate_up_proj", 0, contiguous(_d_mlp, _d_mlp)),),
            "up": (Fused("mlp.gate_up_proj", 1, contiguous(_d_mlp, _d_mlp)),),
            "down": ("mlp.down_proj",),
            "ln_attn": ("input_layernorm",),
            "ln_mlp": ("post_attention_layernorm",),
        },
        model_wide=_LLAMA_MODEL,
        gated_mlp=True,
        notes="fused qkv_proj [q | k | v] and gate_up_proj [gate | up]",
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        per_layer={
            "q": (Fused("attn.c_attn", 0, contiguous(_d_model, _d_model, _d_model)),),
            "k": (Fused("attn.c_attn", 1, contiguous(_d_model, _d_model, _d_model)),),
            "v": (Fused("attn.c_attn", 2, contiguous(_d_model, _d_model, _d_model)),),
            "o": ("attn.c_proj",),
            "up": ("mlp.c_fc",),
            "down": ("mlp.c_proj",),
            "ln_attn": ("ln_1",),
            "ln_mlp": ("ln_2",),
        },
        model_wide={
            "embed": ("transformer.wte", "transformer.wpe"),
            "ln_final": ("transformer.ln_f",),
            "lm_head": ("lm_head",),
        },
        gated_mlp=False,
        notes="Conv1D weights are [in, out]; fused c_attn is [q | k | v]; embed includes positions (wpe)",
        attn_in_norm="ln_1",
    ),
    Family(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        per_layer={
            "q": (Fused("attention.query_key_value", 0, interleaved_per_head),),
            "k": (Fused("attention.query_key_value", 1, interleaved_per_head),),
            "v": (Fused("attention.query_key_value", 2, interleaved_per_head),),
            "o": ("attention.dense",),
            "up": ("mlp.dense_h_to_4h",),
            "down": ("mlp.dense_4h_to_h",),
            "ln_attn": ("input_layernorm",),
            "ln_mlp": ("post_attention_layernorm",),
        },
        model_wide={
            "embed": ("gpt_neox.embed_in",),
            "ln_final": ("gpt_neox.final_layer_norm",),
            "lm_head": ("lm_head",),
        },
        gated_mlp=False,
        notes="fused query_key_value interleaved per head [h0 q,k,v | h1 q,k,v | ...]",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}; supported model types: " + ", ".join(supported_model_types())
    )


def read_dims(config: Any) -> Dims:
    """Sizes from an HF config, whatever the family calls them."""
    # PretrainedConfig.attribute_map makes num_hidden_layers etc. work for GPT-2 too.
    n_layers = int(config.num_hidden_layers)
    n_heads = int(config.num_attention_heads)
    d_model = int(config.hidden_size)
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model
    return Dims(n_layers, n_heads, int(n_kv), d_model, int(d_head), int(d_mlp))


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


@dataclass
class ArchitectureAdapter:
    """A family table bound to one model: canonical names → concrete sites of that model."""

    family: Family
    model_type: str
    dims: Dims
    tied_embeddings: bool
    _layer_sites: list[dict[str, list[Site]]] = field(repr=False)
    _model_sites: dict[str, list[Site]] = field(repr=False)

    # ---- sizes, TransformerLens-style names --------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    @property
    def n_heads(self) -> int:
        return self.dims.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.dims.n_kv_heads

    @property
    def d_head(self) -> int:
        return self.dims.d_head

    @property
    def d_model(self) -> int:
        return self.dims.d_model

    @property
    def gated_mlp(self) -> bool:
        return self.family.gated_mlp

    # ---- lookup --------------------------------------------------------------------------------
    @property
    def layer_components(self) -> list[str]:
        """Per-layer canonical components this model has, in canonical order."""
        present = self._layer_sites[0] if self._layer_sites else {}
        return [c for c in LAYER_COMPONENTS if c in present]

    @property
    def model_components(self) -> list[str]:
        return [c for c in MODEL_COMPONENTS if c in self._model_sites]

    def sites(self, component: str, layer: int | None = None) -> list[Site]:
        """The sites computing ``component`` (at ``layer`` for per-layer components)."""
        if component in MODEL_COMPONENTS:
            if component not in self._model_sites:
                raise UnknownComponentError(
                    f"component {component!r} is absent from this {self.model_type} model "
                    f"(it has: {', '.join(self.model_components)})"
                )
            return list(self._model_sites[component])
        if component not in LAYER_COMPONENTS:
            expand_components([component])  # raises UnknownComponentError with the vocabulary
        if layer is None:
            raise UnknownComponentError(f"component {component!r} is per layer: give a layer")
        if not 0 <= layer < self.n_layers:
            raise LayerSelectionError(
                f"layer {layer} out of range: the model has {self.n_layers} layers (0..{self.n_layers - 1})"
            )
        sites = self._layer_sites[layer].get(component)
        if sites is None:
            raise UnknownComponentError(
                f"component {component!r} is absent from this {self.model_type} model "
                f"(per-layer components: {', '.join(self.layer_components)})"
            )
        return list(sites)

    def mlp_block(self, layer: int) -> str | None:
        """The path of ``layer``'s position-wise MLP module, when every gate/up/down site lies in it."""
        block = f"{self.family.layers}.{layer}.{self.family.mlp_block}"
        paths = [s.path for c in ("gate", "up", "down") for s in self._layer_sites[layer].get(c, [])]
        if not paths or not all(p.startswith(block + ".") for p in paths):
            return None
        return block

    def component_map(self) -> dict[str, list[str]]:
        """Human-readable map: component → module paths (layer 0 shown as ``{i}``)."""
        out: dict[str, list[str]] = {}
        layers_prefix = f"{self.family.layers}.0."
        for comp in self.layer_components:
            out[comp] = [_describe(s, layers_prefix, f"{self.family.layers}.{{i}}.") for s in self._layer_sites[0][comp]]
        for comp in self.model_components:
            out[comp] = [_describe(s) for s in self._model_sites[comp]]
        return out


def _describe(site: Site, prefix: str = "", replacement: str = "") -> str:
    path = replacement + site.path[len(prefix) :] if prefix and site.path.startswith(prefix) else site.path
    if site.rows is None:
        return path
    if len(site.rows) == 1:
        a, b = site.rows[0]
        return f"{path}[rows {a}:{b}]"
    return f"{path}[rows {len(site.rows)} blocks, {site.n_rows} total]"


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """Build the adapter of a loaded HF causal LM, checking that every declared module exists."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no config.model_type; supported model types: " + ", ".join(supported_model_types())
        )
    family = family_for(model_type)
    dims = read_dims(config)

    def bind(prefix: str, spec: SiteSpec) -> Site | None:
        if isinstance(spec, Fused):
            path = prefix + spec.path
            if _resolve(model, path) is None:
                raise UnsupportedArchitectureError(f"{model_type}: expected module {path!r} is missing")
            return Site(path, spec.split(dims, spec.part))
        optional = spec.endswith("?")
        path = prefix + spec.rstrip("?")
        module = _resolve(model, path)
        if module is None or (optional and not _has_params(module)):
            if optional:
                return None
            raise UnsupportedArchitectureError(f"{model_type}: expected module {path!r} is missing")
        return Site(path)

    layer_sites: list[dict[str, list[Site]]] = []
    for i in range(dims.n_layers):
        comps: dict[str, list[Site]] = {}
        for comp, specs in family.per_layer.items():
            bound = [s for s in (bind(f"{family.layers}.{i}.", sp) for sp in specs) if s is not None]
            if bound:
                comps[comp] = bound
        layer_sites.append(comps)
    model_sites: dict[str, list[Site]] = {}
    for comp, specs in family.model_wide.items():
        bound = [s for s in (bind("", sp) for sp in specs) if s is not None]
        if bound:
            model_sites[comp] = bound

    tied = _embeddings_tied(model)
    return ArchitectureAdapter(family, model_type, dims, tied, layer_sites, model_sites)


def _embeddings_tied(model: nn.Module) -> bool:
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if inp is None or out is None:
        return False
    return inp.weight is out.weight or inp.weight.data_ptr() == out.weight.data_ptr()


def output_dim(module: nn.Module, pname: str) -> int:
    """The dimension of ``module``'s parameter ``pname`` that indexes output features: 0 for
    ``nn.Linear`` (``[out, in]``), 1 for the weight of GPT-2's ``Conv1D`` (``[in, out]``)."""
    from transformers.pytorch_utils import Conv1D

    return 1 if isinstance(module, Conv1D) and pname == "weight" else 0
