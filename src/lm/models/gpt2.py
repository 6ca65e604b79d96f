"""GPT-2 (`type: gpt2`), compatible with HF `GPT2LMHeadModel`.

Architecture:
- learned token (`wte`) and absolute position (`wpe`) embeddings, embedding dropout;
- pre-LayerNorm blocks: fused QKV projection (`c_attn`), multi-head attention, output
  projection (`c_proj`), MLP `c_fc` -> activation (gelu_new) -> `c_proj`, residual dropout;
- attention scores scaled by 1/sqrt(head size) (`scale_attn_weights: false` leaves them
  unscaled), optionally also divided by layer index + 1 (`scale_attn_by_inverse_layer_idx`);
- final LayerNorm `ln_f`; the LM head is tied to the token embeddings;
- layers stacked on the axis "layers" and scanned (`Stacked`) with a remat policy.

Linear weights keep HF's `Conv1D` layout (In, Out), so HF keys map one to one:
`transformer.wte/wpe`, `transformer.h.<i>.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,
mlp.c_proj}`, `transformer.ln_f`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax.numpy as jnp
from haliax import Axis, NamedArray
from haliax.jax_utils import maybe_rng_split, named_call, shaped_rng_split
from haliax.quantization import DefaultDotGeneralOp
from haliax.state_dict import ModuleWithStateDictSerialization
from jaxtyping import PRNGKeyArray

from lm.config import FieldError, field_problem, invalid
from lm.models.hf.compat import HFCompatConfig
from lm.models.layers.activations import ActivationFunctionEnum
from lm.models.layers.attention import (
    AttentionBackend,
    AttentionMask,
    dot_product_attention,
)
from lm.models.layers.checks import (
    activation_problems,
    attention_backend_problems,
    norm_and_init_problems,
    positive_int_problems,
)
from lm.models.layers.embedding import lookup
from lm.models.layers.init import init_embedding, init_linear
from lm.models.layers.linear import project
from lm.models.layers.normalization import LayerNorm
from lm.models.layers.scan import GradientCheckpointing, checkpoint_policy, stack_layers
from lm.models.lm_model import LmConfig, LmHeadModel


@LmConfig.register_subclass("gpt2")
@dataclasses.dataclass(frozen=True)
class Gpt2Config(HFCompatConfig["Gpt2LMHeadModel"]):
    """GPT-2. Defaults are the 124M model."""

    seq_len: int = 1024
    """Context length: the size of the "position" axis and of the position embeddings."""
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_scale: int = 4
    """MLP width as a multiple of `hidden_dim`."""
    initializer_range: float = 0.02
    """Std of the normal init of weights and embeddings (output projections are further
    scaled by 1/sqrt(2 * num_layers))."""
    embed_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    activation_function: ActivationFunctionEnum = ActivationFunctionEnum.gelu_new
    scale_attn_by_inverse_layer_idx: bool = False
    """Also divide attention scores of layer i (0-based) by i + 1."""
    scale_attn_weights: bool = True
    """Divide attention scores by sqrt(head size) (HF `scale_attn_weights`); false leaves
    them unscaled."""
    upcast_attn: bool = False
    """Compute attention scores and softmax in float32 under a low-precision policy."""
    gradient_checkpointing: GradientCheckpointing = True
    """Remat policy for the scanned layers: true (the reference default), "auto" (no remat
    when the step fits in device memory, else true; resolved by train_lm), false, "full",
    "offload", "save_all", "nested", or a `ScanCheckpointPolicy` mapping."""
    use_bias: bool = True
    """Biases in the linear layers and LayerNorms."""
    use_flash_attention: bool | None = None
    """Legacy switch: true means attn_backend jax_flash, false means vanilla."""
    attn_backend: AttentionBackend | None = None
    """vanilla, jax_flash, nvte (GPU) or default (None: default)."""
    flash_attention_block_size: int | None = None
    """Tile size for jax_flash (None: 128)."""

    hf_architecture: ClassVar[str] = "GPT2LMHeadModel"
    hf_model_type: ClassVar[str] = "gpt2"
    hf_base_model_prefix: ClassVar[str] = "transformer"
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "seq_len",
            "initializer_range",
            "embed_pdrop",
            "resid_pdrop",
            "attn_pdrop",
            "upcast_attn",
            "gradient_checkpointing",
            "use_flash_attention",
            "attn_backend",
            "flash_attention_block_size",
            "cross_entropy_block_size",
        }
    )
    hf_learned_positions: ClassVar[bool] = True

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems()
        sizes = positive_int_problems(
            self, ("seq_len", "hidden_dim", "num_layers", "num_heads", "mlp_scale")
        )
        problems += sizes
        bad_sizes = {p.field for p in sizes}
        # judged once the two sizes it divides are valid, whatever the other sizes are
        if not bad_sizes & {"hidden_dim", "num_heads"} and self.hidden_dim % self.num_heads != 0:
            problems.append(
                invalid("num_heads", self.num_heads, f"a divisor of hidden_dim ({self.hidden_dim})")
            )
        dropout_ok = True
        for name in ("embed_pdrop", "resid_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(invalid(name, value, "a probability in [0, 1)"))
                dropout_ok = False
        problems += norm_and_init_problems(self)
        problems += activation_problems(self)
        problems += field_problem(lambda: checkpoint_policy(self.gradient_checkpointing))
        backend_problems = attention_backend_problems(self)
        problems += backend_problems
        backend = self.attn_backend
        if backend_problems:
            return problems
        if self.use_flash_attention is not None and backend not in (None, AttentionBackend.default):
            implied = (
                AttentionBackend.jax_flash if self.use_flash_attention else AttentionBackend.vanilla
            )
            if implied != backend:
                problems.append(
                    FieldError(
                        "use_flash_attention",
                        f"{self.use_flash_attention} contradicts attn_backend ({backend.value}); "
                        "set only attn_backend",
                    )
                )
        fused = (AttentionBackend.jax_flash, AttentionBackend.nvte)
        if dropout_ok and self.attention_backend in fused and self.attn_pdrop > 0:
            problems.append(
                FieldError(
                    "attn_pdrop",
                    f"{self.attn_pdrop} needs attn_backend: vanilla; "
                    f"{self.attention_backend.value} has no attention dropout",
                )
            )
        return problems

    # Axes
    Pos = property(lambda self: Axis("position", self.seq_len))
    KeyPos = property(lambda self: self.Pos.alias("key_position"))
    Embed = property(lambda self: Axis("embed", self.hidden_dim))
    Heads = property(lambda self: Axis("heads", self.num_heads))
    Layers = property(lambda self: Axis("layers", self.num_layers))
    Mlp = property(lambda self: Axis("mlp", self.hidden_dim * self.mlp_scale))
    HeadSize = property(lambda self: Axis("head_size", self.hidden_dim // self.num_heads))

    @property
    def model_type(self) -> type[Gpt2LMHeadModel]:
        return Gpt2LMHeadModel

    @property
    def attention_backend(self) -> AttentionBackend | None:
        """`attn_backend`, or what the legacy `use_flash_attention` implies."""
        if self.attn_backend not in (None, AttentionBackend.default):
            return self.attn_backend
        if self.use_flash_attention is True:
            return AttentionBackend.jax_flash
        if self.use_flash_attention is False:
            return AttentionBackend.vanilla
        return self.attn_backend

    def flops_per_token(self, vocab_size: int) -> float:
        E, M, S, L = self.hidden_dim, self.Mlp.size, self.seq_len, self.num_layers
        qkv = 2 * E * 3 * E
        scores_and_values = 2 * (2 * S * E)
        out_proj = 2 * E * E
        mlp = 2 * (2 * E * M)
        return float(L * (qkv + scores_and_values + out_proj + mlp) + 2 * E * vocab_size)

    def total_trainable_params(self, vocab_size: int) -> int:
        E, M = self.hidden_dim, self.Mlp.size
        b = 1 if self.use_bias else 0
        norm = E * (1 + b)
        block = (
            norm
            + (E * 3 * E + b * 3 * E)
            + (E * E + b * E)
            + norm
            + (E * M + b * M)
            + (M * E + b * E)
        )
        return vocab_size * E + self.seq_len * E + self.num_layers * block + norm

    # HF conversion
    def to_hf_config(self, vocab_size: int, config_overrides: Mapping[str, Any] | None = None):
        from transformers import GPT2Config as HfGpt2Config

        if not self.use_bias:
            raise ValueError("use_bias: false has no HF GPT-2 equivalent (GPT-2 always has biases)")
        # GPT-2's <|endoftext|> (50256) as BOS/EOS only when the vocabulary has it (the
        # exporter then sets the ids of the tokenizer the model was trained with)
        ids = {} if vocab_size > 50256 else {"bos_token_id": None, "eos_token_id": None}
        hf = HfGpt2Config(
            vocab_size=vocab_size,
            n_positions=self.seq_len,
            n_embd=self.hidden_dim,
            n_layer=self.num_layers,
            n_head=self.num_heads,
            n_inner=self.Mlp.size,
            activation_function=self.activation_function.value,
            resid_pdrop=self.resid_pdrop,
            embd_pdrop=self.embed_pdrop,
            attn_pdrop=self.attn_pdrop,
            layer_norm_epsilon=self.layer_norm_epsilon,
            initializer_range=self.initializer_range,
            scale_attn_by_inverse_layer_idx=self.scale_attn_by_inverse_layer_idx,
            scale_attn_weights=self.scale_attn_weights,
            reorder_and_upcast_attn=False,
            tie_word_embeddings=True,
            architectures=[self.hf_architecture],
            **ids,
        )
        for k, v in (config_overrides or {}).items():
            setattr(hf, k, v)
        return hf

    @classmethod
    def from_hf_config(cls, hf_config) -> Gpt2Config:
        n_inner = getattr(hf_config, "n_inner", None) or 4 * hf_config.n_embd
        if n_inner % hf_config.n_embd != 0:
            raise ValueError(
                f"HF GPT-2 n_inner ({n_inner}) is not a multiple of n_embd ({hf_config.n_embd}); "
                "Gpt2Config only expresses the MLP width as mlp_scale * hidden_dim"
            )
        if getattr(hf_config, "reorder_and_upcast_attn", False):
            raise ValueError("HF GPT-2 reorder_and_upcast_attn is not supported")
        if getattr(hf_config, "tie_word_embeddings", True) is False:
            raise ValueError(
                "HF GPT-2 with untied embeddings (tie_word_embeddings: false) is not supported"
            )
        return cls(
            seq_len=hf_config.n_positions,
            hidden_dim=hf_config.n_embd,
            num_layers=hf_config.n_layer,
            num_heads=hf_config.n_head,
            mlp_scale=n_inner // hf_config.n_embd,
            initializer_range=hf_config.initializer_range,
            embed_pdrop=hf_config.embd_pdrop,
            resid_pdrop=hf_config.resid_pdrop,
            attn_pdrop=hf_config.attn_pdrop,
            layer_norm_epsilon=hf_config.layer_norm_epsilon,
            activation_function=ActivationFunctionEnum.parse(
                hf_config.activation_function, field="activation_function"
            ),
            scale_attn_by_inverse_layer_idx=hf_config.scale_attn_by_inverse_layer_idx,
            scale_attn_weights=bool(getattr(hf_config, "scale_attn_weights", True)),
        )

    def hf_ignored_keys(self) -> tuple[str, ...]:
        # Old checkpoints store the causal-mask buffers; the head is tied to wte.
        return (r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight")

    def trim_hf_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        # A shorter context than the checkpoint's uses the first seq_len learned positions.
        out = dict(state_dict)
        for key in ("transformer.wpe.weight", "wpe.weight"):
            if key in out and out[key].shape[0] > self.seq_len:
                out[key] = out[key][: self.seq_len]
        return out


class Gpt2Mlp(ModuleWithStateDictSerialization):
    c_fc: hnn.Linear
    c_proj: hnn.Linear
    act: ActivationFunctionEnum = eqx.field(static=True)

    @staticmethod
    def init(config: Gpt2Config, *, key: PRNGKeyArray) -> Gpt2Mlp:
        k_fc, k_proj = maybe_rng_split(key, 2)
        std = config.initializer_range
        c_fc = init_linear(
            config.Embed, config.Mlp, key=k_fc, std=std, use_bias=config.use_bias, out_first=False
        )
        c_proj = init_linear(
            config.Mlp,
            config.Embed,
            key=k_proj,
            std=std / math.sqrt(2 * config.num_layers),
            use_bias=config.use_bias,
            out_first=False,
        )
        return Gpt2Mlp(c_fc, c_proj, config.activation_function)

    @named_call
    def __call__(self, x: NamedArray) -> NamedArray:
        # checkpoint names: see PROJECTION_NAMES (gradient_checkpointing: save_projections)
        up = hax.tree_checkpoint_name(self.c_fc(x), "mlp_up")
        return self.c_proj(self.act.to_fn()(up))


def _split_qkv(x: NamedArray) -> list[NamedArray]:
    """The three slices of `x` along its qkv axis, as one split.

    `hax.unbind` indexes the axis three times; the backward of each index is a pad of its
    gradient back to the full (.., qkv, ..) shape, and the three are summed. The backward of
    a split is one concatenation."""
    index = x.axis_indices("qkv")
    axes = tuple(ax for ax in x.axes if ax.name != "qkv")
    parts = jnp.split(x.array, x.axis_size("qkv"), axis=index)
    return [NamedArray(jnp.squeeze(part, index), axes) for part in parts]


def _project_qkv(c_attn: hnn.Linear, x: NamedArray) -> list[NamedArray]:
    """q, k, v: the fused projection as three matmuls, one per slice of its weight (what
    `c_attn(x)` then a split of its output computes, through `Linear`'s own `project`).

    Split after one matmul, the backward concatenates dq, dk and dv into the fused
    (.., qkv, heads, head_size) gradient, and XLA:CPU writes that twice, once transposed for
    the weight gradient (~100 ms of copies per config-2 step). Split weights (a few MiB)
    need no concatenation of activations: config-2 loss + grad 2.3-3.8% faster, config 1
    unchanged (docs/benchmarks.md). The parameter stays one fused `c_attn`."""
    weight = c_attn.weight * c_attn.reparam.active_scale
    names = ("q_proj", "k_proj", "v_proj")
    if not isinstance(c_attn.dot_general, DefaultDotGeneralOp):
        # a quantized matmul (trainer.quantization) keeps one set of scales per layer: three
        # calls would sum three next states into it (fp8's scales tripled every step, until
        # the q/k/v products underflowed to 0) and mix the slices' maxima. One matmul, split.
        fused = project(
            x, weight, c_attn.bias, c_attn.In, c_attn.Out, dot_general=c_attn.dot_general
        )
        return [
            hax.tree_checkpoint_name(part, name)
            for part, name in zip(_split_qkv(fused), names, strict=True)
        ]
    biases = _split_qkv(c_attn.bias) if c_attn.bias is not None else [None] * 3
    Out = tuple(ax for ax in c_attn.Out if ax.name != "qkv")
    return [
        hax.tree_checkpoint_name(
            project(x, w, b, c_attn.In, Out, dot_general=c_attn.dot_general), name
        )
        for w, b, name in zip(_split_qkv(weight), biases, names, strict=True)
    ]


class Gpt2Attention(ModuleWithStateDictSerialization):
    c_attn: hnn.Linear
    """Embed -> (qkv, heads, head_size), stored (In, Out) like HF Conv1D."""
    c_proj: hnn.Linear
    """(heads, head_size) -> Embed."""
    dropout: hnn.Dropout
    config: Gpt2Config = eqx.field(static=True)

    @staticmethod
    def init(config: Gpt2Config, *, key: PRNGKeyArray) -> Gpt2Attention:
        k_attn, k_proj = maybe_rng_split(key, 2)
        Qkv = Axis("qkv", 3)
        std = config.initializer_range
        c_attn = init_linear(
            config.Embed,
            (Qkv, config.Heads, config.HeadSize),
            key=k_attn,
            std=std,
            use_bias=config.use_bias,
            out_first=False,
        )
        c_proj = init_linear(
            (config.Heads, config.HeadSize),
            config.Embed,
            key=k_proj,
            std=std / math.sqrt(2 * config.num_layers),
            use_bias=config.use_bias,
            out_first=False,
        )
        return Gpt2Attention(c_attn, c_proj, hnn.Dropout(config.attn_pdrop), config)

    @named_call
    def __call__(
        self,
        x: NamedArray,
        mask: AttentionMask | None,
        layer_idx: NamedArray,
        *,
        key: PRNGKeyArray | None = None,
    ) -> NamedArray:
        c = self.config
        q, k, v = _project_qkv(self.c_attn, x)
        k = k.rename({c.Pos.name: c.KeyPos.name})
        v = v.rename({c.Pos.name: c.KeyPos.name})
        scale = 1.0 / math.sqrt(c.HeadSize.size) if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale = scale / (layer_idx.array.astype(jnp.float32) + 1.0)
        attn = dot_product_attention(
            c.Pos.name,
            c.KeyPos.name,
            c.HeadSize.name,
            q,
            k,
            v,
            mask,
            scale=scale,
            backend=c.attention_backend,
            flash_block_size=c.flash_attention_block_size,
            upcast=c.upcast_attn,
            dropout=self.dropout,
            prng=key,
        )
        # the attention output is named "attn_out" by dot_product_attention
        return hax.tree_checkpoint_name(self.c_proj(attn), "attn_proj")


class Gpt2Block(ModuleWithStateDictSerialization):
    ln_1: LayerNorm
    attn: Gpt2Attention
    ln_2: LayerNorm
    mlp: Gpt2Mlp
    resid_dropout: hnn.Dropout

    @staticmethod
    def init(config: Gpt2Config, *, key: PRNGKeyArray) -> Gpt2Block:
        k_attn, k_mlp = maybe_rng_split(key, 2)
        return Gpt2Block(
            ln_1=_layer_norm(config),
            attn=Gpt2Attention.init(config, key=k_attn),
            ln_2=_layer_norm(config),
            mlp=Gpt2Mlp.init(config, key=k_mlp),
            resid_dropout=hnn.Dropout(config.resid_pdrop),
        )

    @named_call
    def __call__(
        self,
        x: NamedArray,
        mask: AttentionMask | None,
        layer_idx: NamedArray,
        *,
        key: PRNGKeyArray | None = None,
    ) -> NamedArray:
        k_attn, k_drop1, k_drop2 = maybe_rng_split(key, 3)
        attn = self.attn(self.ln_1(x), mask, layer_idx, key=k_attn)
        x = x + self.resid_dropout(attn, key=k_drop1, inference=k_drop1 is None)
        mlp = self.mlp(self.ln_2(x))
        return x + self.resid_dropout(mlp, key=k_drop2, inference=k_drop2 is None)


class Gpt2Transformer(ModuleWithStateDictSerialization):
    blocks: hnn.Stacked[Gpt2Block]
    ln_f: LayerNorm
    config: Gpt2Config = eqx.field(static=True)

    @staticmethod
    def init(config: Gpt2Config, *, key: PRNGKeyArray) -> Gpt2Transformer:
        blocks = stack_layers(
            config.Layers,
            Gpt2Block,
            scan=True,
            gradient_checkpointing=config.gradient_checkpointing,
        )(config, key=shaped_rng_split(key, config.num_layers))
        return Gpt2Transformer(blocks, _layer_norm(config), config)

    def _state_dict_key_map(self) -> dict[str, str | None]:
        return {"blocks": "h"}

    @named_call
    def __call__(
        self, x: NamedArray, mask: AttentionMask | None, *, key: PRNGKeyArray | None = None
    ) -> NamedArray:
        keys = shaped_rng_split(key, self.config.num_layers) if key is not None else None
        layer_idx = hax.arange(self.config.Layers)
        x = self.blocks.fold(x, mask, layer_idx, key=keys)
        return self.ln_f(x)


class Gpt2Embeddings(ModuleWithStateDictSerialization):
    Vocab: Axis = eqx.field(static=True)
    token_embeddings: hnn.Embedding
    position_embeddings: hnn.Embedding
    dropout: hnn.Dropout

    @staticmethod
    def init(Vocab: Axis, config: Gpt2Config, *, key: PRNGKeyArray) -> Gpt2Embeddings:
        k_tok, k_pos = maybe_rng_split(key, 2)
        std = config.initializer_range
        return Gpt2Embeddings(
            Vocab,
            init_embedding(Vocab, config.Embed, key=k_tok, std=std),
            init_embedding(config.Pos, config.Embed, key=k_pos, std=std),
            hnn.Dropout(config.embed_pdrop),
        )

    def _state_dict_key_map(self) -> dict[str, str | None]:
        return {"token_embeddings": "wte", "position_embeddings": "wpe"}

    @named_call
    def embed(self, input_ids: NamedArray, *, key: PRNGKeyArray | None = None) -> NamedArray:
        Pos = self.position_embeddings.Vocab
        InPos = input_ids.resolve_axis(Pos.name)
        if InPos.size > Pos.size:
            raise ValueError(
                f"input has {InPos.size} positions but the model has {Pos.size} position embeddings (seq_len)"
            )
        x = lookup(self.token_embeddings, input_ids)
        x = x + lookup(self.position_embeddings, hax.arange(InPos))
        return self.dropout(x, key=key, inference=key is None)

    def resize(self, new_size: int, key: PRNGKeyArray | None = None) -> Gpt2Embeddings:
        tokens = self.token_embeddings.resize_embeddings(new_size, key=key)
        return dataclasses.replace(self, Vocab=tokens.Vocab, token_embeddings=tokens)


class Gpt2LMHeadModel(LmHeadModel[Gpt2Config], ModuleWithStateDictSerialization):
    transformer: Gpt2Transformer
    embeddings: Gpt2Embeddings

    @property
    def config(self) -> Gpt2Config:
        return self.transformer.config

    @property
    def Vocab(self) -> Axis:
        return self.embeddings.Vocab

    @classmethod
    def init(cls, Vocab: Axis, config: Gpt2Config, *, key: PRNGKeyArray) -> Gpt2LMHeadModel:
        k_t, k_e = maybe_rng_split(key, 2)
        return Gpt2LMHeadModel(
            Gpt2Transformer.init(config, key=k_t), Gpt2Embeddings.init(Vocab, config, key=k_e)
        )

    def _state_dict_key_map(self) -> dict[str, str | None]:
        return {"transformer": "transformer", "embeddings": "transformer"}

    def activations(
        self,
        input_ids: NamedArray,
        attn_mask: AttentionMask | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> NamedArray:
        k_embed, k_transformer = maybe_rng_split(key, 2)
        x = self.embeddings.embed(input_ids, key=k_embed)
        if attn_mask is None:
            attn_mask = AttentionMask.causal()
        return self.transformer(x, attn_mask, key=k_transformer)

    def get_lm_head(self) -> NamedArray:
        return self.embeddings.token_embeddings.weight

    def resize_vocab(self, new_size: int, key: PRNGKeyArray | None = None) -> Gpt2LMHeadModel:
        return dataclasses.replace(self, embeddings=self.embeddings.resize(new_size, key=key))


def _layer_norm(config: Gpt2Config) -> LayerNorm:
    return LayerNorm.init(config.Embed, eps=config.layer_norm_epsilon, use_bias=config.use_bias)
