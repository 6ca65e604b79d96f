"""Llama (`type: llama`), compatible with HF `LlamaForCausalLM`; the base of the Mistral and
Qwen variants.

Architecture:
- token embeddings (optionally followed by a norm: `input_embedding_norm`);
- pre-RMSNorm decoder layers: attention with grouped-query heads (`num_kv_heads`: 1 is MQA,
  `num_heads` is MHA), rotary position embeddings (`rope`: default/linear/llama3/yarn),
  optional per-head RMSNorm on queries and keys (`use_qk_norm`, Qwen3), optional sliding
  window (Mistral); a SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`);
- `hybrid_norm`: extra norms on the attention and MLP outputs before the residual add;
- a final RMSNorm and an LM head (`lm_head`, or the token embeddings when
  `tie_word_embeddings`);
- layers on the axis "layer", scanned (`Stacked`, `scan_layers: true`) or unrolled
  (`BlockSeq`), with a remat policy.

HF keys: `model.embed_tokens`, `model.layers.<i>.{input_layernorm, self_attn.{q,k,v,o}_proj,
self_attn.{q,k}_norm, post_attention_layernorm, mlp.{gate,up,down}_proj}`, `model.norm`,
`lm_head`. Query heads are laid out (kv_head, q_heads_per_group) so that HF's head h maps
to KV head h // group size, as in HF's `repeat_kv`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
from haliax import Axis, NamedArray
from haliax.axis import AxisSpec
from haliax.jax_utils import maybe_rng_split, named_call, shaped_rng_split
from haliax.state_dict import ModuleWithStateDictSerialization
from jaxtyping import PRNGKeyArray

from lm.config import ConfigError, FieldError, decode, field_problem, invalid
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
from lm.models.layers.configs import AttentionConfig, LayerNormConfig
from lm.models.layers.embedding import lookup
from lm.models.layers.init import init_embedding, init_linear
from lm.models.layers.normalization import RmsNorm
from lm.models.layers.rotary import (
    DefaultRotaryEmbeddingsConfig,
    RotaryEmbeddingsConfig,
    apply_rotary,
)
from lm.models.layers.scan import GradientCheckpointing, checkpoint_policy, stack_layers
from lm.models.lm_model import LmConfig, LmHeadModel


@LmConfig.register_subclass("llama")
@dataclasses.dataclass(frozen=True)
class LlamaConfig(HFCompatConfig["LlamaLMHeadModel"]):
    """Llama 2/3 family. Defaults are Llama-2-7B."""

    seq_len: int = 2048
    hidden_dim: int = 4096
    intermediate_dim: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    head_dim: int | None = None
    """Per-head size; None means hidden_dim // num_heads."""
    num_kv_heads: int = 32
    """Key/value heads: 1 is MQA, num_heads is MHA, otherwise GQA. Must divide num_heads."""
    activation_function: ActivationFunctionEnum = ActivationFunctionEnum.silu
    initializer_range: float = 0.02
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    hybrid_norm: bool = False
    """Extra norms on the attention and MLP outputs (not expressible in HF)."""
    use_qk_norm: bool = False
    """Per-head RMSNorm on queries and keys before RoPE (Qwen3)."""
    input_embedding_norm: bool = False
    """A norm right after the token embeddings (not expressible in HF)."""
    upcast_attn: bool = False
    attn_backend: AttentionBackend | None = None
    flash_attention_block_size: int | None = None
    gradient_checkpointing: GradientCheckpointing = True
    """Remat policy for the layers: true (the reference default), "auto" (no remat when
    the step fits in device memory, else true; resolved by train_lm), false, "full",
    "offload", "save_all", "nested", or a `ScanCheckpointPolicy` mapping."""
    scan_layers: bool = True
    """Scan over a stacked layer axis (fast compiles) instead of unrolling the layers."""
    use_bias: bool = False
    """Biases on the attention and MLP projections (HF attention_bias and mlp_bias)."""
    use_layer_norm_weight: bool = True
    rope: RotaryEmbeddingsConfig = dataclasses.field(default_factory=DefaultRotaryEmbeddingsConfig)
    reference_checkpoint: str = "NousResearch/Llama-2-7b-hf"
    """Default HF checkpoint (or local dir) for tokenizer/config when converting."""
    tokenizer: str | None = None

    hf_architecture: ClassVar[str] = "LlamaForCausalLM"
    hf_model_type: ClassVar[str] = "llama"
    hf_base_model_prefix: ClassVar[str] = "model"
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "seq_len",
            "initializer_range",
            "upcast_attn",
            "attn_backend",
            "flash_attention_block_size",
            "gradient_checkpointing",
            "scan_layers",
            "reference_checkpoint",
            "tokenizer",
            "cross_entropy_block_size",
        }
    )

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems()
        sizes = positive_int_problems(
            self,
            (
                "seq_len",
                "hidden_dim",
                "intermediate_dim",
                "num_layers",
                "num_heads",
                "num_kv_heads",
            ),
        )
        problems += sizes
        head_dim_ok = self.head_dim is None or (
            not isinstance(self.head_dim, bool)
            and isinstance(self.head_dim, int)
            and self.head_dim > 0
            and self.head_dim % 2 == 0
        )
        if not head_dim_ok:
            problems.append(invalid("head_dim", self.head_dim, "a positive even int or null"))
        problems += self._head_problems({p.field for p in sizes}, head_dim_ok)
        problems += norm_and_init_problems(self)
        problems += activation_problems(self)
        problems += attention_backend_problems(self)
        problems += field_problem(lambda: checkpoint_policy(self.gradient_checkpointing))
        problems += self._rope_problems()
        return problems

    def _rope_problems(self) -> list[FieldError]:
        """`rope` given from Python as the mapping a run YAML holds (`{"type": "llama3"}`) is
        decoded as that YAML would be, with the same errors; anything else must be a
        `RotaryEmbeddingsConfig`."""
        if isinstance(self.rope, Mapping):
            try:
                rope = decode(RotaryEmbeddingsConfig, dict(self.rope), path="rope")
            except ConfigError as e:
                return [FieldError(p.path, p.message) for p in e.problems]
            object.__setattr__(self, "rope", rope)
        elif not isinstance(self.rope, RotaryEmbeddingsConfig):
            return [
                invalid(
                    "rope",
                    self.rope,
                    "a RotaryEmbeddingsConfig (e.g. Llama3RotaryEmbeddingsConfig()), or a dict "
                    'of its fields with its `type` as in a run YAML ({"type": "llama3"})',
                )
            ]
        return []

    def _head_problems(self, bad_sizes: set[str], head_dim_ok: bool) -> list[FieldError]:
        """How the heads divide: each check waits only for the sizes it uses to be valid
        (`num_layers: 0` does not hide a `num_kv_heads` that does not divide `num_heads`)."""
        problems = []
        if "num_heads" in bad_sizes:
            return problems
        if "num_kv_heads" not in bad_sizes and self.num_heads % self.num_kv_heads != 0:
            problems.append(
                invalid(
                    "num_kv_heads", self.num_kv_heads, f"a divisor of num_heads ({self.num_heads})"
                )
            )
        if "hidden_dim" in bad_sizes:
            return problems
        if self.head_dim is None and self.hidden_dim % self.num_heads != 0:
            problems.append(
                invalid(
                    "num_heads",
                    self.num_heads,
                    f"a divisor of hidden_dim ({self.hidden_dim}) unless head_dim is set",
                )
            )
        elif head_dim_ok and self.actual_head_size % 2 != 0:
            problems.append(
                invalid(
                    "num_heads",
                    self.num_heads,
                    f"a divisor of hidden_dim ({self.hidden_dim}) giving an even head size for "
                    f"rotary embeddings (hidden_dim / num_heads is {self.actual_head_size}), or "
                    "set head_dim",
                )
            )
        return problems

    # Axes
    Pos = property(lambda self: Axis("position", self.seq_len))
    KeyPos = property(lambda self: self.Pos.alias("key_position"))
    Embed = property(lambda self: Axis("embed", self.hidden_dim))
    Heads = property(lambda self: Axis("heads", self.num_heads))
    KVHeads = property(lambda self: Axis("kv_head", self.num_kv_heads))
    QHeadsPerGroup = property(
        lambda self: Axis("q_heads_per_group", self.num_heads // self.num_kv_heads)
    )
    HeadSize = property(lambda self: Axis("head_size", self.actual_head_size))
    Layers = property(lambda self: Axis("layer", self.num_layers))
    Mlp = property(lambda self: Axis("mlp", self.intermediate_dim))

    @property
    def actual_head_size(self) -> int:
        """`head_dim` if set, else hidden_dim // num_heads."""
        return self.head_dim if self.head_dim is not None else self.hidden_dim // self.num_heads

    @property
    def model_type(self) -> type[LlamaLMHeadModel]:
        return LlamaLMHeadModel

    # Hooks the variants override.
    @property
    def qkv_bias(self) -> bool:
        return self.use_bias

    @property
    def out_proj_bias(self) -> bool:
        return self.use_bias

    @property
    def mlp_bias(self) -> bool:
        return self.use_bias

    @property
    def sliding_window(self) -> int | None:
        return None

    @property
    def norm_config(self) -> LayerNormConfig:
        """The norm every Llama norm is built from (RMSNorm, `layer_norm_epsilon`)."""
        return LayerNormConfig(
            kind="rms", eps=self.layer_norm_epsilon, use_weight=self.use_layer_norm_weight
        )

    def mk_LayerNorm(self, axis: AxisSpec) -> RmsNorm:
        return self.norm_config.build(axis)

    def attention_config(self) -> AttentionConfig:
        """The attention block of every layer (heads, RoPE, qk-norm, window, kernel)."""
        return AttentionConfig(
            Embed=self.Embed,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.actual_head_size,
            qkv_bias=self.qkv_bias,
            out_proj_bias=self.out_proj_bias,
            rope=self.rope,
            qk_norm=self.norm_config if self.use_qk_norm else None,
            sliding_window=self.sliding_window,
            upcast_attn=self.upcast_attn,
            attn_backend=self.attn_backend,
            flash_attention_block_size=self.flash_attention_block_size,
            initializer_range=self.initializer_range,
        )

    def flops_per_token(self, vocab_size: int) -> float:
        E, D, S = self.hidden_dim, self.actual_head_size, self.seq_len
        H, K = self.num_heads, self.num_kv_heads
        qkv = 2 * E * (H + 2 * K) * D
        scores_and_values = 2 * (2 * S * H * D)
        out_proj = 2 * H * D * E
        mlp = 2 * 3 * E * self.intermediate_dim
        return float(
            self.num_layers * (qkv + scores_and_values + out_proj + mlp) + 2 * E * vocab_size
        )

    def total_trainable_params(self, vocab_size: int) -> int:
        E, D, I = self.hidden_dim, self.actual_head_size, self.intermediate_dim  # noqa: E741
        H, K = self.num_heads, self.num_kv_heads
        norm = E if self.use_layer_norm_weight else 0
        attn = E * (H + 2 * K) * D + H * D * E
        attn += (H + 2 * K) * D * self.qkv_bias + E * self.out_proj_bias
        if self.use_qk_norm:
            attn += 2 * (D if self.use_layer_norm_weight else 0)
        mlp = 3 * E * I + (2 * I + E) * self.mlp_bias
        layer = attn + mlp + 2 * norm + (2 * norm if self.hybrid_norm else 0)
        total = vocab_size * E + self.num_layers * layer + norm
        if self.input_embedding_norm:
            total += norm
        if not self.tie_word_embeddings:
            total += vocab_size * E
        return total

    # HF conversion
    def _check_hf_expressible(self, *, qk_norm_allowed: bool = False):
        if self.hybrid_norm or self.input_embedding_norm:
            raise ValueError(
                "hybrid_norm and input_embedding_norm have no HF equivalent; a model using them "
                "cannot be exported to an HF config"
            )
        if not self.use_layer_norm_weight:
            raise ValueError(
                "use_layer_norm_weight: false has no HF equivalent (HF RMSNorm has a weight)"
            )
        if self.use_qk_norm and not qk_norm_allowed:
            raise ValueError(
                f"use_qk_norm has no HF {self.hf_architecture} equivalent; use type: qwen3"
            )

    def _hf_kwargs(self, vocab_size: int) -> dict[str, Any]:
        return dict(
            vocab_size=vocab_size,
            hidden_size=self.hidden_dim,
            intermediate_size=self.intermediate_dim,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.actual_head_size,
            hidden_act=self.activation_function.value,
            max_position_embeddings=self.seq_len,
            initializer_range=self.initializer_range,
            rms_norm_eps=self.layer_norm_epsilon,
            tie_word_embeddings=self.tie_word_embeddings,
            rope_parameters=self.rope.to_hf_rope_parameters(),
            architectures=[self.hf_architecture],
        )

    @classmethod
    def _hf_config_class(cls):
        from transformers import LlamaConfig as HfLlamaConfig

        return HfLlamaConfig

    def to_hf_config(self, vocab_size: int, config_overrides: Mapping[str, Any] | None = None):
        """HF config for this model.

        Raises:
            ValueError: if hybrid_norm or input_embedding_norm (or another feature HF cannot
                express) is enabled.
        """
        self._check_hf_expressible()
        kwargs = self._hf_kwargs(vocab_size)
        kwargs.update(attention_bias=self.use_bias, mlp_bias=self.use_bias)
        hf = self._hf_config_class()(**kwargs)
        for k, v in (config_overrides or {}).items():
            setattr(hf, k, v)
        return hf

    @classmethod
    def _kwargs_from_hf(cls, hf_config) -> dict[str, Any]:
        hidden, heads = hf_config.hidden_size, hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None)
        if head_dim == hidden // heads and hidden % heads == 0:
            head_dim = None
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        layer_types = getattr(hf_config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(
                f"HF layer_types {sorted(set(layer_types))}: per-layer attention types (e.g. "
                "sliding_attention) are not supported"
            )
        return dict(
            seq_len=hf_config.max_position_embeddings,
            hidden_dim=hidden,
            intermediate_dim=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=heads,
            head_dim=head_dim,
            num_kv_heads=kv_heads,
            activation_function=ActivationFunctionEnum.parse(
                hf_config.hidden_act, field="hidden_act"
            ),
            initializer_range=hf_config.initializer_range,
            layer_norm_epsilon=hf_config.rms_norm_eps,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            rope=RotaryEmbeddingsConfig.from_hf_rope_parameters(
                getattr(hf_config, "rope_parameters", None)
            ),
        )

    @classmethod
    def from_hf_config(cls, hf_config) -> LlamaConfig:
        kwargs = cls._kwargs_from_hf(hf_config)
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        mlp_bias = bool(getattr(hf_config, "mlp_bias", False))
        if attention_bias != mlp_bias:
            raise ValueError(
                f"HF attention_bias ({attention_bias}) != mlp_bias ({mlp_bias}): LlamaConfig has a "
                "single use_bias"
            )
        return cls(**kwargs, use_bias=attention_bias)

    def hf_ignored_keys(self) -> tuple[str, ...]:
        ignored = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
        if self.tie_word_embeddings:
            ignored.append(r"lm_head\.weight")
        return tuple(ignored)


class LlamaMlp(ModuleWithStateDictSerialization):
    gate_proj: hnn.Linear
    up_proj: hnn.Linear
    down_proj: hnn.Linear
    act: ActivationFunctionEnum = eqx.field(static=True)

    @staticmethod
    def init(config: LlamaConfig, *, key: PRNGKeyArray) -> LlamaMlp:
        k_gate, k_up, k_down = maybe_rng_split(key, 3)
        std, bias = config.initializer_range, config.mlp_bias
        return LlamaMlp(
            init_linear(config.Embed, config.Mlp, key=k_gate, std=std, use_bias=bias),
            init_linear(config.Embed, config.Mlp, key=k_up, std=std, use_bias=bias),
            init_linear(config.Mlp, config.Embed, key=k_down, std=std, use_bias=bias),
            config.activation_function,
        )

    @named_call
    def __call__(self, x: NamedArray) -> NamedArray:
        # checkpoint names: see PROJECTION_NAMES (gradient_checkpointing: save_projections)
        gate = hax.tree_checkpoint_name(self.gate_proj(x), "mlp_gate")
        up = hax.tree_checkpoint_name(self.up_proj(x), "mlp_up")
        return self.down_proj(self.act.to_fn()(gate) * up)


class LlamaAttention(ModuleWithStateDictSerialization):
    q_proj: hnn.Linear
    """Embed -> (kv_head, q_heads_per_group, head_size)."""
    k_proj: hnn.Linear
    """Embed -> (kv_head, head_size)."""
    v_proj: hnn.Linear
    o_proj: hnn.Linear
    """(kv_head, q_heads_per_group, head_size) -> Embed."""
    q_norm: RmsNorm | None
    k_norm: RmsNorm | None
    config: LlamaConfig = eqx.field(static=True)

    @staticmethod
    def init(config: LlamaConfig, *, key: PRNGKeyArray) -> LlamaAttention:
        a = config.attention_config()
        k_q, k_k, k_v, k_o = maybe_rng_split(key, 4)
        std = a.initializer_range
        q_norm = k_norm = None
        if a.qk_norm is not None:
            q_norm, k_norm = a.qk_norm.build(a.HeadSize), a.qk_norm.build(a.HeadSize)
        return LlamaAttention(
            init_linear(a.Embed, a.q_axes, key=k_q, std=std, use_bias=a.qkv_bias),
            init_linear(a.Embed, a.kv_axes, key=k_k, std=std, use_bias=a.qkv_bias),
            init_linear(a.Embed, a.kv_axes, key=k_v, std=std, use_bias=a.qkv_bias),
            init_linear(a.q_axes, a.Embed, key=k_o, std=std, use_bias=a.out_proj_bias),
            q_norm,
            k_norm,
            config,
        )

    @named_call
    def __call__(
        self, x: NamedArray, mask: AttentionMask | None, *, key: PRNGKeyArray | None = None
    ) -> NamedArray:
        del key  # no attention dropout in the Llama family
        c = self.config
        a = c.attention_config()
        q = hax.tree_checkpoint_name(self.q_proj(x), "q_proj")
        k = hax.tree_checkpoint_name(self.k_proj(x), "k_proj")
        v = hax.tree_checkpoint_name(self.v_proj(x), "v_proj")
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if a.rope is not None:
            q = apply_rotary(q, HeadSize=a.HeadSize, Pos=c.Pos, config=a.rope)
            k = apply_rotary(k, HeadSize=a.HeadSize, Pos=c.Pos, config=a.rope)
        k = k.rename({c.Pos.name: c.KeyPos.name})
        v = v.rename({c.Pos.name: c.KeyPos.name})
        if mask is None:
            mask = AttentionMask.causal()
        mask = mask.with_sliding_window(a.sliding_window)
        attn = dot_product_attention(
            c.Pos.name,
            c.KeyPos.name,
            a.HeadSize.name,
            q,
            k,
            v,
            mask,
            scale=a.scale,
            backend=a.attn_backend,
            flash_block_size=a.flash_attention_block_size,
            upcast=a.upcast_attn,
        )
        out = self.o_proj(attn)  # named "attn_out" by dot_product_attention
        return hax.tree_checkpoint_name(out, "attn_proj")


class LlamaDecoderLayer(ModuleWithStateDictSerialization):
    self_attn: LlamaAttention
    mlp: LlamaMlp
    input_layernorm: RmsNorm
    post_attention_layernorm: RmsNorm
    post_attn_norm: RmsNorm | None
    """hybrid_norm: norm on the attention output."""
    post_mlp_norm: RmsNorm | None
    """hybrid_norm: norm on the MLP output."""

    @staticmethod
    def init(config: LlamaConfig, *, key: PRNGKeyArray) -> LlamaDecoderLayer:
        k_attn, k_mlp = maybe_rng_split(key, 2)
        hybrid = config.hybrid_norm
        return LlamaDecoderLayer(
            LlamaAttention.init(config, key=k_attn),
            LlamaMlp.init(config, key=k_mlp),
            config.mk_LayerNorm(config.Embed),
            config.mk_LayerNorm(config.Embed),
            config.mk_LayerNorm(config.Embed) if hybrid else None,
            config.mk_LayerNorm(config.Embed) if hybrid else None,
        )

    @named_call
    def __call__(
        self, x: NamedArray, mask: AttentionMask | None, *, key: PRNGKeyArray | None = None
    ) -> NamedArray:
        attn = self.self_attn(self.input_layernorm(x), mask, key=key)
        if self.post_attn_norm is not None:
            attn = self.post_attn_norm(attn)
        x = x + attn
        mlp = self.mlp(self.post_attention_layernorm(x))
        if self.post_mlp_norm is not None:
            mlp = self.post_mlp_norm(mlp)
        return x + mlp


class LlamaTransformer(ModuleWithStateDictSerialization):
    layers: hnn.Stacked[LlamaDecoderLayer] | hnn.BlockSeq[LlamaDecoderLayer]
    norm: RmsNorm
    config: LlamaConfig = eqx.field(static=True)

    @staticmethod
    def init(config: LlamaConfig, *, key: PRNGKeyArray) -> LlamaTransformer:
        layers = stack_layers(
            config.Layers,
            LlamaDecoderLayer,
            scan=config.scan_layers,
            gradient_checkpointing=config.gradient_checkpointing,
        )(config, key=shaped_rng_split(key, config.num_layers))
        return LlamaTransformer(layers, config.mk_LayerNorm(config.Embed), config)

    @named_call
    def __call__(
        self, x: NamedArray, mask: AttentionMask | None, *, key: PRNGKeyArray | None = None
    ) -> NamedArray:
        keys = shaped_rng_split(key, self.config.num_layers) if key is not None else None
        x = self.layers.fold(x, mask, key=keys)
        return self.norm(x)


class LlamaEmbedding(ModuleWithStateDictSerialization):
    Vocab: Axis = eqx.field(static=True)
    token_embeddings: hnn.Embedding
    norm: RmsNorm | None
    """input_embedding_norm."""

    @staticmethod
    def init(Vocab: Axis, config: LlamaConfig, *, key: PRNGKeyArray) -> LlamaEmbedding:
        tokens = init_embedding(Vocab, config.Embed, key=key, std=config.initializer_range)
        norm = config.mk_LayerNorm(config.Embed) if config.input_embedding_norm else None
        return LlamaEmbedding(Vocab, tokens, norm)

    def _state_dict_key_map(self) -> dict[str, str | None]:
        return {"token_embeddings": "embed_tokens", "norm": "embedding_norm"}

    @named_call
    def embed(self, input_ids: NamedArray) -> NamedArray:
        x = lookup(self.token_embeddings, input_ids)
        return self.norm(x) if self.norm is not None else x

    def resize(self, new_size: int, key: PRNGKeyArray | None = None) -> LlamaEmbedding:
        tokens = self.token_embeddings.resize_embeddings(new_size, key=key)
        return dataclasses.replace(self, Vocab=tokens.Vocab, token_embeddings=tokens)


class LlamaLMHeadModel(LmHeadModel[LlamaConfig], ModuleWithStateDictSerialization):
    transformer: LlamaTransformer
    embeddings: LlamaEmbedding
    lm_head: hnn.Linear | None
    """Embed -> Vocab, weight (Vocab, Embed); None when tie_word_embeddings."""

    @property
    def config(self) -> LlamaConfig:
        return self.transformer.config

    @property
    def Vocab(self) -> Axis:
        return self.embeddings.Vocab

    @classmethod
    def init(cls, Vocab: Axis, config: LlamaConfig, *, key: PRNGKeyArray) -> LlamaLMHeadModel:
        k_t, k_e, k_head = maybe_rng_split(key, 3)
        lm_head = None
        if not config.tie_word_embeddings:
            lm_head = init_linear(
                config.Embed, Vocab, key=k_head, std=config.initializer_range, use_bias=False
            )
        return cls(
            LlamaTransformer.init(config, key=k_t),
            LlamaEmbedding.init(Vocab, config, key=k_e),
            lm_head,
        )

    def _state_dict_key_map(self) -> dict[str, str | None]:
        return {"transformer": "model", "embeddings": "model"}

    def activations(
        self,
        input_ids: NamedArray,
        attn_mask: AttentionMask | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> NamedArray:
        x = self.embeddings.embed(input_ids)
        if attn_mask is None:
            attn_mask = AttentionMask.causal()
        return self.transformer(x, attn_mask, key=key)

    def get_lm_head(self) -> NamedArray:
        if self.lm_head is None:
            return self.embeddings.token_embeddings.weight
        return self.lm_head.weight

    def resize_vocab(self, new_size: int, key: PRNGKeyArray | None = None) -> LlamaLMHeadModel:
        k_embed, k_head = maybe_rng_split(key, 2)
        embeddings = self.embeddings.resize(new_size, key=k_embed)
        lm_head = self.lm_head
        if lm_head is not None:
            weight = hax.tree_util.resize_axis(lm_head.weight, self.Vocab, new_size, key=k_head)
            lm_head = dataclasses.replace(lm_head, weight=weight, Out=embeddings.Vocab)
        return dataclasses.replace(self, embeddings=embeddings, lm_head=lm_head)
