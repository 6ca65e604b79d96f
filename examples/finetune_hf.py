"""Fine-tune a Hugging Face GPT-2 checkpoint with lm's `Trainer` and save the result as an
HF checkpoint again.

The checkpoint directory is what `save_pretrained` writes (config.json, model.safetensors
and the tokenizer files). Text comes from JSON-lines / text files (`--train_data`,
`--validation_data`, local paths or fsspec URLs) or, by default, the embedded stdlib corpus.

    python examples/finetune_hf.py --hf_checkpoint ./gpt2-small --steps 200 --out /tmp/ft

prints the validation loss before and after, and writes `<out>/hf` (loadable with
`transformers.AutoModelForCausalLM.from_pretrained`). Windows are the model's full
`n_positions`, since its position embeddings are loaded as they are.
"""

import argparse

import haliax as hax
import jax

from lm.checkpoint import CheckpointerConfig
from lm.data import CacheOptions, LMDatasetConfig
from lm.main.eval_lm import evaluate_lm, token_byte_lengths
from lm.models.hf.converter import HFCheckpointConverter
from lm.models.loss import compute_next_token_loss
from lm.optim import AdamConfig
from lm.tracker import JsonLoggerConfig
from lm.trainer import Trainer, TrainerConfig, WatchConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hf_checkpoint", required=True, help="directory written by save_pretrained")
    p.add_argument("--train_data", nargs="*", default=[], help="jsonl/txt files or URLs")
    p.add_argument("--validation_data", nargs="*", default=[])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--out", default="finetune_run")
    args = p.parse_args()

    # Any architecture lm knows (gpt2, llama, mistral, qwen2, qwen3), from its config.json.
    converter = HFCheckpointConverter.for_checkpoint(args.hf_checkpoint)
    model_config = converter.config_from_hf_checkpoint(args.hf_checkpoint)
    data = LMDatasetConfig(
        train_urls=args.train_data,
        validation_urls=args.validation_data,
        builtin=None if args.train_data else "stdlib",
        tokenizer=args.hf_checkpoint,
        cache_dir=f"{args.out}/cache",
        cache_options=CacheOptions(backend="local"),
    )
    tokenizer = data.the_tokenizer
    Vocab = hax.Axis("vocab", converter.hf_config_from_checkpoint(args.hf_checkpoint).vocab_size)
    if len(tokenizer) > Vocab.size:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, the model {Vocab.size}")

    config = TrainerConfig(
        num_train_steps=args.steps,
        train_batch_size=args.batch_size,
        steps_per_eval=max(args.steps // 4, 1),
        require_accelerator=False,
        tracker=JsonLoggerConfig(),
        log_dir=f"{args.out}/logs",
        id="finetune",
        checkpointer=CheckpointerConfig(base_path=f"{args.out}/checkpoints"),
        # Gradient/parameter norms run in a second compiled version of the step; a short
        # fine-tune is done before that compile pays off.
        watch=WatchConfig(interval=0),
    )
    optimizer = AdamConfig(learning_rate=args.learning_rate, warmup=0.1, weight_decay=0.0)
    trainer = Trainer(config, optimizer.build(args.steps), compute_next_token_loss)
    with trainer:
        model = converter.load_pretrained(
            args.hf_checkpoint, config=model_config, axis_mapping=trainer.parameter_axis_mapping
        )
        validation = data.validation_sets(model_config.Pos)[""]
        byte_lengths = token_byte_lengths(tokenizer, Vocab.size)
        before = evaluate_lm(trainer, model, validation, byte_lengths=byte_lengths)
        trainer.add_eval_hook(validation)
        # training FLOPs of one example: forward + backward = 3 x forward
        flops = 3 * model_config.flops_per_token(Vocab.size) * model_config.seq_len
        trainer.set_throughput_model(
            tokens_per_example=model_config.seq_len, flops_per_example=flops
        )
        train = data.train_set(model_config.Pos, key=jax.random.PRNGKey(1))
        state = trainer.initial_state(jax.random.PRNGKey(2), model=model)
        info = trainer.train(state, trainer.data_loader(train))
        after = evaluate_lm(trainer, info.state.model, validation, byte_lengths=byte_lengths)

        out = f"{args.out}/hf"
        converter.save_pretrained(info.state.model, out, tokenizer=tokenizer, vocab_size=Vocab.size)
    for name, r in [("before", before), ("after", after)]:
        print(
            f"{name} fine-tuning: loss {r.loss:.6f}  bits/byte {r.bits_per_byte:.6f}  "
            f"tokens {r.num_tokens}",
            flush=True,
        )
    print(f"saved the fine-tuned model to {out}")


if __name__ == "__main__":
    main()
