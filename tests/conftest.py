"""Shared fixtures: a tiny Llama with a character-level tokenizer, built in code."""

import copy
import string
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character, plus chat special tokens."""
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|im_(start|end)\|>|."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(vocab_size: int, eos_token_id: int, pad_token_id: int, **extra):
    """A 2-layer Llama of width 32; ``extra`` adds or overrides fields (e.g. ``num_labels``)."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # room for episodes with lit_rl's default budget
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
    )
    return LlamaConfig(**{**settings, **extra})


def build_tiny_model(vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, eos_token_id, pad_token_id))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF directory (config.json, safetensors, tokenizer) of a 2-layer random Llama."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_reward_model(
    directory: Path, num_labels: int = 1, chat_template: bool = True
) -> Path:
    """A 2-layer random Llama sequence classifier (a reward model with one label) and the
    tiny tokenizer, saved in ``directory``."""
    tokenizer = build_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    torch.manual_seed(5)
    config = tiny_llama_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, num_labels=num_labels
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward-model"))


def make_rollout(tokenizer, prompts: list[str], completion_length: int = 6, seed: int = 0):
    """A hand-built Experience over random completion tokens (no generation)."""
    from lit_rl.experience import Experience

    prompt = tokenizer(prompts, return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(seed)
    completion = torch.randint(10, len(tokenizer), (len(prompts), completion_length), generator=g)
    lengths = torch.randint(1, completion_length + 1, (len(prompts),), generator=g)
    mask = torch.arange(completion_length)[None, :] < lengths[:, None]
    return Experience(
        input_ids=torch.cat([prompt.input_ids, completion], 1),
        attention_mask=torch.cat([prompt.attention_mask, torch.ones_like(completion)], 1),
        completion_mask=mask,
        rewards=torch.zeros(len(prompts)),
        token_rewards=torch.zeros(mask.shape),
        advantages=torch.randn(len(prompts), 1, generator=g) * mask,
    )


class Trained(Callback):
    """Keeps every training batch's Experience and its update (the module's
    ``handoff.trained``), and the policy's weights each of those batches started from."""

    def __init__(self):
        self.batches = []  # lit_rl.experience.TrainedBatch, one per batch with an update
        self.weights = []  # the policy's state dict before each of those updates
        self._weights = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._weights = copy.deepcopy(pl_module.policy.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.handoff.trained is not None:
            self.batches.append(pl_module.handoff.trained)
            self.weights.append(self._weights)


def rollout_trainer(max_steps: int = 1, callbacks: tuple = (), logprob_check=None, rollout=None):
    """A quiet Trainer with a RolloutCallback (``rollout``, else one with ``logprob_check``,
    the default one when ``None``), plus ``callbacks``, and no validation."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_rl.callbacks import RolloutCallback

    return Trainer(
        max_steps=max_steps,
        callbacks=[rollout or RolloutCallback(logprob_check), *callbacks],
        logger=False,
        # Lightning's default checkpoint callback only where the test brings its own.
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def fit_rollouts(
    module,
    model_dir,
    steps: int = 1,
    callbacks: tuple = (),
    engine=None,
    logprob_check=None,
    rollout=None,
    ckpt_path=None,
    **data_args,
):
    """Train ``module`` for ``steps`` optimizer steps on the embedded math prompts, tokenized for
    the model in ``model_dir``, with ``engine`` as its rollout engine when given, ``rollout``
    as its RolloutCallback when given, from ``ckpt_path`` when given; ``data_args`` override
    PromptDataModule's test defaults."""
    from lit_rl.data import PromptDataModule

    if engine is not None:
        module.engine = engine
    settings = dict(tokenizer=str(model_dir), batch_size=2, num_train=8, num_val=2)
    trainer = rollout_trainer(steps, callbacks, logprob_check, rollout)
    trainer.fit(module, PromptDataModule(**{**settings, **data_args}), ckpt_path=ckpt_path)
    return trainer


TINY_LORA = dict(
    r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"]
)


def built(module):
    """``module`` with its models built, as the Trainer builds them (``configure_model``)."""
    module.configure_model()
    return module


def tiny_module_args(model_dir, **overrides) -> dict:
    """Arguments of a GRPO or PPO module on the tiny model: LoRA, float32 (hand-checked numbers
    must not depend on the CPU's bf16 units), 4 generations, a learning rate that moves it."""
    from peft import LoraConfig

    from tests.byo_reward import ContainsTargetCharacter

    args = dict(
        reward=ContainsTargetCharacter(field="answer"),
        model=str(model_dir),
        dtype="float32",
        lora=LoraConfig(**TINY_LORA),
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-2,
    )
    return {**args, **overrides}


def sample(engine, model, prompt_ids, prompt_mask, num_generations, sampling, pad_id, eos_ids):
    """One generation by ``engine`` from ``model``'s weights (synced as version 0)."""
    from lit_rl.rollout import GenerationRequest

    engine.setup(model, sampling)
    engine.sync_weights(model, 0)
    request = GenerationRequest(
        prompt_ids, prompt_mask, num_generations, sampling, pad_id, tuple(eos_ids)
    )
    return engine.generate(request)
