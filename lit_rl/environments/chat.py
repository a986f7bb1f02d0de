"""Token in, token out: an episode's token ids grow by appending, never by re-tokenizing.

The model's turns stay the ids it sampled. Each observation is rendered alone, as the chat
template's text between the end of an assistant message and the start of the next one
(``ChatRenderer.observation``), and appended: the separator the template writes after an
assistant's EOS (SmolLM2's and Qwen's ``"\\n"``), the observation's messages, and the generation
prompt. Re-rendering the whole conversation each turn would make the trainer score other tokens
than were sampled (a text decoded and encoded again need not give the same ids).

This holds for a template that extends a conversation by appending: rendering it with one more
message leaves the text of the earlier ones as it was. A template that rewrites its past (one
that drops the reasoning of earlier assistant turns, or numbers messages from the end) is
refused when the renderer is built, with what changed.
"""

from typing import Any

from transformers import PreTrainedTokenizerBase

from lit_rl.environments.base import Message

# A stand-in conversation the template renders to show how it closes an assistant message and
# opens the next ones; the reasoning block catches templates that drop it from earlier turns.
_PROBE_USER = "lit_rl probe question"
_PROBE_ANSWER = "<think>\nlit_rl probe reasoning\n</think>\n\nlit_rl probe answer"
_PROBE = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
_PROBE_OBSERVATION = [{"role": "user", "content": "lit_rl probe observation"}]


class TemplateError(ValueError):
    """The chat template cannot extend an episode by appending."""


class ChatRenderer:
    """The token ids of an episode's prompt and of each observation appended to it.

    Args:
        tokenizer: with the model's chat template.
        eos_token_ids: the tokens that end a turn (one of them closes an assistant message in
            the template).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: tuple[int, ...]) -> None:
        self.tokenizer = tokenizer
        self.probe = self._render(_PROBE, generation_prompt=False)
        answer_at = self.probe.rfind(_PROBE_ANSWER)
        if answer_at < 0:
            raise TemplateError(
                "the chat template does not render an assistant message's content as given "
                f"(rendered: {self.probe!r}), so sampled turns cannot be kept as sampled: use a "
                "template that writes assistant content verbatim"
            )
        self.closing = self.probe[answer_at + len(_PROBE_ANSWER) :]  # e.g. "<|im_end|>\n"
        eos_texts = [tokenizer.convert_ids_to_tokens(i) for i in eos_token_ids]
        eos_text = next((text for text in eos_texts if self.closing.startswith(text)), None)
        if eos_text is None:
            raise TemplateError(
                f"the chat template closes an assistant message with {self.closing!r}, which "
                f"does not start with an EOS token ({eos_texts}): a sampled turn would never "
                "end where the template ends it; add that token to the EOS ids or fix the "
                "template"
            )
        self.separator = self.closing[len(eos_text) :]  # after the sampled EOS, e.g. "\n"
        self.observation(_PROBE_OBSERVATION, turn_stopped=True)  # refuses a rewriting template

    def _render(
        self, messages: list[Message], generation_prompt: bool, tools: list | None = None
    ) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )

    def prompt(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The episode's first messages with the generation prompt, as the datamodule renders a
        single-turn prompt, and the tools' schemas where the template shows them."""
        text = self._render(messages, generation_prompt=True, tools=tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def observation(self, messages: list[Message], turn_stopped: bool) -> list[int]:
        """The ids between the model's last sampled token and its next turn: the template's
        separator (with the assistant's closing tokens first when the turn ran out of tokens
        before its EOS), ``messages``, and the generation prompt."""
        extended = self._render([*_PROBE, *messages], generation_prompt=True)
        if not extended.startswith(self.probe):
            changed = next(
                (i for i, (a, b) in enumerate(zip(self.probe, extended, strict=False)) if a != b),
                min(len(self.probe), len(extended)),
            )
            raise TemplateError(
                "the chat template does not extend a conversation by appending: with one more "
                f"message it renders the earlier ones differently (from character {changed}: "
                f"{self.probe[changed : changed + 60]!r} became "
                f"{extended[changed : changed + 60]!r}), so an episode's past would be "
                "re-tokenized; use a template that leaves earlier messages as they were"
            )
        start = self.separator if turn_stopped else self.closing
        text = start + extended[len(self.probe) :]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
