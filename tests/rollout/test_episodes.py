"""EpisodeSampler without a Trainer, on the tiny model's character tokenizer (one token per
character, so lengths are counted by eye) and a scripted engine: token in, token out; the
masks and logprobs; the budgets (an observation that fills the budget, one that overflows, the
turn cap, a turn cut by what remains); tool calls that fail; independent environments; async
environments; and the template refusals."""

import threading
from functools import partial

import pytest
import torch

from lit_rl.environments import (
    Calculator,
    ChatRenderer,
    Episodes,
    HermesToolCalls,
    TemplateError,
)
from lit_rl.models import load_model, load_tokenizer
from lit_rl.rewards import EPISODE_REWARD
from lit_rl.rollout import EpisodeSampler, SamplingParams
from tests.conftest import CHAT_TEMPLATE
from tests.environments.toy import AsyncGuess, Guess, SecretNumber, TurnEngine

EOS = "<|im_end|>"


@pytest.fixture
def parts(tiny_model_dir):
    Guess.instances.clear()
    return load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))


def run(
    parts, turns, episodes, rows, num_generations=1, max_new=16, stop=True, greedy=False,
    stop_strings=(),
):  # fmt: skip
    tokenizer, model = parts
    engine = TurnEngine(tokenizer, turns, stop)
    sampling = SamplingParams(max_new, stop=stop_strings)
    eos = (tokenizer.eos_token_id,)
    sampler = EpisodeSampler(engine, model, tokenizer, eos, sampling, episodes)
    batch = {
        "input_ids": torch.zeros(len(rows), 1, dtype=torch.long),
        **{key: [row[key] for row in rows] for key in rows[0]},
    }
    return sampler.rollouts(batch, num_generations, version=0, greedy=greedy), engine


def ids_of(parts, text):
    return parts[0](text, add_special_tokens=False).input_ids


def observation_ids(parts, text, stopped=True):
    renderer = ChatRenderer(parts[0], (parts[0].eos_token_id,))
    return renderer.observation([{"role": "user", "content": text}], stopped)


ROW = {"prompt": "2+3?", "answer": "5"}


def test_an_episode_is_its_turns_and_observations_token_for_token(parts):
    episodes = Episodes(Guess, max_turns=4, max_episode_tokens=200)
    out, engine = run(parts, ["it is 4", "it is 5"], episodes, [ROW])
    seed_digit = Guess.instances[0].seed % 10
    turn_1, turn_2 = ids_of(parts, "it is 4" + EOS), ids_of(parts, "it is 5" + EOS)
    observation = observation_ids(parts, f"no {seed_digit}, again")
    assert out.ids[0].tolist() == turn_1 + observation + turn_2
    assert out.mask[0].tolist() == [True] * len(turn_1) + [False] * len(observation) + [True] * len(
        turn_2
    )
    # The engine's logprobs of the sampled tokens are kept where they were sampled, 0 elsewhere.
    expected = [-(t + 1) / 1000 for t in range(len(turn_1))] + [0.0] * len(observation)
    expected += [-(100 + t + 1) / 1000 for t in range(len(turn_2))]
    torch.testing.assert_close(out.logprobs[0], torch.tensor(expected), rtol=0, atol=0)
    # The second turn was asked with the whole conversation so far, as one token sequence.
    second = engine.requests[1]
    prompt = second.prompt_ids[0][second.prompt_mask[0].bool()].tolist()
    assert prompt == out.prompt_ids[0][out.prompt_mask[0].bool()].tolist() + turn_1 + observation
    assert out.texts == ["it is 5"] and out.fields[EPISODE_REWARD] == [1.0]
    assert not out.truncated[0]
    assert out.stats["turns"].tolist() == [2.0]
    assert out.stats["environment_tokens"].tolist() == [float(len(observation))]
    assert out.stats["misses"].tolist() == [1.0]
    assert "⟦" in out.transcripts[0] and "no " in out.transcripts[0]


def test_the_episode_is_the_chat_templates_rendering_of_the_conversation(parts):
    # Token in, token out equals re-rendering here (a template that extends by appending and a
    # tokenizer whose turns are their text's tokens): the episode's ids are the template's
    # tokens of the whole conversation, separators included, up to the last sampled EOS.
    tokenizer = parts[0]
    episodes = Episodes(Guess, max_turns=4, max_episode_tokens=200)
    out, _ = run(parts, ["it is 4", "it is 6", "5"], episodes, [ROW])
    digit = Guess.instances[0].seed % 10
    conversation = [{"role": "user", "content": ROW["prompt"]}]
    for text in ["it is 4", "it is 6"]:
        conversation += [{"role": "assistant", "content": text}]
        conversation += [{"role": "user", "content": f"no {digit}, again"}]
    conversation += [{"role": "assistant", "content": "5"}]
    rendered = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False)).input_ids
    episode = out.prompt_ids[0][out.prompt_mask[0].bool()].tolist() + out.ids[0].tolist()
    assert rendered[: len(episode)] == episode
    assert tokenizer.decode(rendered[len(episode) :]) == "\n"  # the separator after the last EOS


def test_the_mask_picks_out_exactly_the_sampled_turns(parts):
    episodes = Episodes(Guess, max_turns=3, max_episode_tokens=200)
    out, _ = run(parts, ["a", "bb", "ccc"], episodes, [ROW, {"prompt": "1+1?", "answer": "2"}])
    tokenizer = parts[0]
    for row in range(2):
        sampled = out.ids[row][out.mask[row]].tolist()
        assert tokenizer.decode(sampled) == "a" + EOS + "bb" + EOS + "ccc" + EOS
        assert out.ids.shape == out.mask.shape == out.logprobs.shape
        assert (out.logprobs[row][~out.mask[row]] == 0).all()
    assert out.truncated.tolist() == [True, True]  # the turn cap, never a right answer


def test_an_observation_that_exactly_fills_the_budget_ends_the_episode_uncut(parts):
    turn = ids_of(parts, "it is 4" + EOS)
    observation = observation_ids(parts, "no 0, again")
    budget = len(turn) + len(observation)
    episodes = Episodes(partial(Guess, "no 0, again"), max_turns=4, max_episode_tokens=budget)
    out, _ = run(parts, ["it is 4"], episodes, [ROW])
    assert out.ids[0].tolist() == turn + observation  # whole, and no turn after it
    assert out.truncated.tolist() == [True] and out.stats["turns"].tolist() == [1.0]


def test_an_observation_over_the_budget_is_cut_there_and_truncates(parts):
    turn = ids_of(parts, "it is 4" + EOS)
    observation = observation_ids(parts, "no 0, again")
    budget = len(turn) + len(observation) - 3
    episodes = Episodes(partial(Guess, "no 0, again"), max_turns=4, max_episode_tokens=budget)
    out, _ = run(parts, ["it is 4"], episodes, [ROW])
    assert out.ids[0].tolist() == turn + observation[:-3]
    assert out.truncated.tolist() == [True]


def test_a_turn_samples_at_most_what_remains_of_the_budget(parts):
    turn = ids_of(parts, "it is 4" + EOS)
    observation = observation_ids(parts, "no 0, again")
    budget = len(turn) + len(observation) + 2
    episodes = Episodes(partial(Guess, "no 0, again"), max_turns=4, max_episode_tokens=budget)
    out, engine = run(parts, ["it is 4", "it is 5"], episodes, [ROW])
    assert engine.requests[1].sampling.max_new_tokens == 2
    assert out.ids[0].tolist() == turn + observation + ids_of(parts, "it")
    assert out.truncated.tolist() == [True] and out.fields[EPISODE_REWARD] == [0.0]


def test_a_turn_out_of_tokens_gets_the_templates_closing_before_the_observation(parts):
    # max_new_tokens 3 cuts "it is 4" before its EOS; the template's closing (EOS + separator)
    # is the environment's, so the next turn sees a well-formed conversation.
    episodes = Episodes(Guess, max_turns=2, max_episode_tokens=200)
    out, _ = run(parts, ["it is 4"], episodes, [ROW], max_new=3)
    digit = Guess.instances[0].seed % 10
    observation = observation_ids(parts, f"no {digit}, again", stopped=False)
    assert parts[0].decode(observation).startswith(EOS + "\n")
    assert out.ids[0].tolist() == ids_of(parts, "it ") + observation + ids_of(parts, "it ")
    assert Guess.instances[0].turns[0].stopped is False


def test_observations_are_cut_to_max_observation_tokens(parts):
    episodes = Episodes(partial(Guess, "x" * 50), max_turns=2, max_observation_tokens=5)
    out, _ = run(parts, ["no"], episodes, [ROW])
    assert observation_ids(parts, "xxxxx") == out.ids[0][~out.mask[0]].tolist()
    assert out.stats["observations_cut"].tolist() == [1.0]


def test_the_g_episodes_of_a_prompt_are_independent_environments_with_the_groups_seed(parts):
    episodes = Episodes(Guess, max_turns=1)
    out, _ = run(
        parts, ["5"], episodes, [ROW, {"prompt": "1+1?", "answer": "2"}], num_generations=3
    )
    assert len(Guess.instances) == 6 and len({id(e) for e in Guess.instances}) == 6
    seeds = [e.seed for e in Guess.instances]  # one per prompt, shared by its G episodes
    assert seeds[:3] == [seeds[0]] * 3 and seeds[3:] == [seeds[3]] * 3 and seeds[0] != seeds[3]
    assert [e.row["prompt"] for e in Guess.instances] == ["2+3?"] * 3 + ["1+1?"] * 3
    assert all(e.closed for e in Guess.instances)
    assert out.fields[EPISODE_REWARD] == [1.0] * 3 + [0.0] * 3


def test_the_g_episodes_of_a_seeded_environment_play_the_same_game(parts):
    # A secret drawn from the seed (as the docs' GuessTheNumber draws it): the 4 episodes of
    # each prompt are posed the same problem, token for token, and another prompt another one;
    # the secret decides the reward, so the group's rewards compare one game.
    episodes = Episodes(SecretNumber, max_turns=1)
    out, _ = run(parts, ["7"], episodes, [ROW, ROW], num_generations=4)
    prompts = [
        tuple(row[mask.bool()].tolist())
        for row, mask in zip(out.prompt_ids, out.prompt_mask, strict=True)
    ]
    assert len(set(prompts[:4])) == 1 and len(set(prompts[4:])) == 1
    assert prompts[0] != prompts[4]
    games = [parts[0].decode(list(p)).split("game ")[1].split("<")[0] for p in prompts[::4]]
    secrets = [game[-1] for game in games]
    expected = [float(secret == "7") for secret in secrets for _ in range(4)]
    assert out.fields[EPISODE_REWARD] == expected


def test_a_rows_seed_is_its_groups_seed_and_the_prompt_is_the_environments(parts):
    # Rows of games (lit_rl.data.EnvironmentRows) fix their seed; a row without one draws it.
    # The environment's first message is the prompt rewards and sample panels read.
    episodes = Episodes(SecretNumber, max_turns=1)
    rows = [{"prompt": "", "seed": 1234}, {"prompt": "", "seed": 1234}]
    out, _ = run(parts, ["4"], episodes, rows, num_generations=2)
    assert out.fields["prompt"] == [" game 1234"] * 4
    assert out.fields[EPISODE_REWARD] == [1.0] * 4  # the secret is 1234 % 10 = 4


def test_seeds_follow_torchs_rng(parts):
    episodes = Episodes(Guess, max_turns=1)
    torch.manual_seed(7)
    run(parts, ["5"], episodes, [ROW])
    torch.manual_seed(7)
    run(parts, ["5"], episodes, [ROW])
    assert Guess.instances[0].seed == Guess.instances[1].seed


def test_async_environments_are_answered_together(parts):
    AsyncGuess.expected, AsyncGuess.waiting = 4, 0
    episodes = Episodes(AsyncGuess, max_turns=2)
    out, _ = run(parts, ["4", "5"], episodes, [ROW], num_generations=4)
    assert out.fields[EPISODE_REWARD] == [1.0] * 4
    assert out.stats["turns"].tolist() == [2.0] * 4


def test_failing_tool_calls_are_answered_and_the_episode_goes_on(parts):
    answered = threading.Event()

    def slow() -> str:
        """Answers only once the test lets it: never within the tools' timeout."""
        answered.wait()
        return "woke"

    from lit_rl.environments import calculate

    # 2 s: ample for the calculator on a loaded machine; the slow tool never answers in it.
    environment = partial(Calculator, [calculate, slow], 2.0, "tools", tool_role="user")
    episodes = Episodes(
        environment,
        max_turns=6,
        max_episode_tokens=2000,
        max_observation_tokens=None,
        tool_parser=HermesToolCalls(),
    )
    turns = [
        '<tool_call>{"name": "calculate", "arguments": {"expression": "2+3"}}</tool_call>',
        "<tool_call>{calculate</tool_call>",
        '<tool_call>{"name": "search", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "calculate", "arguments": {"expression": "1/0"}}</tool_call>',
        '<tool_call>{"name": "slow", "arguments": {}}</tool_call>',
        "The answer is 5",
    ]
    try:
        out, _ = run(parts, turns, episodes, [ROW], max_new=100)
    finally:
        answered.set()  # the tool's worker thread ends
    text = parts[0].decode(out.ids[0][~out.mask[0]])
    assert "\n5<|im_end|>" in text  # the calculator's answer
    assert "tool call 1 is not valid JSON" in text
    assert "unknown tool 'search'" in text
    assert "calculate raised ZeroDivisionError" in text
    assert "slow did not answer within 2 s" in text
    assert out.fields[EPISODE_REWARD] == [1.0] and not out.truncated[0]
    assert out.stats["tool_calls"].tolist() == [5.0] and out.stats["tool_errors"].tolist() == [4.0]
    assert out.stats["turns"].tolist() == [6.0]


REWRITING = (  # drops the reasoning of assistant turns that are not the last message
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_EOS = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end]\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (REWRITING, "does not extend a conversation by appending"),
        (NO_EOS, "does not start with an EOS token"),
    ],
    ids=["rewrites-its-past", "closes-without-eos"],
)
def test_a_template_that_cannot_extend_by_appending_is_refused(parts, template, message):
    tokenizer = parts[0]
    tokenizer.chat_template = template
    with pytest.raises(TemplateError, match=message):
        ChatRenderer(tokenizer, (tokenizer.eos_token_id,))


@pytest.mark.embedded
def test_token_in_token_out_with_smollm2s_template_and_tokenizer(tiny_model_dir):
    # A byte-level BPE and a template that adds a default system prompt: the episode is still
    # the template's tokens of the whole conversation (the turns' texts tokenize to the ids
    # the scripted engine sampled). The tiny model only stands in for the synced policy.
    Guess.instances.clear()
    tokenizer = load_tokenizer("embedded")
    parts = (tokenizer, load_model(str(tiny_model_dir)))
    episodes = Episodes(partial(Guess, "No. Try again, with a number."), max_turns=3)
    turns = ["I think it is 4.", "Then 6!", "It's 5"]
    out, _ = run(parts, turns, episodes, [ROW], max_new=32)
    conversation = [{"role": "user", "content": ROW["prompt"]}]
    for text in turns[:2]:
        conversation += [{"role": "assistant", "content": text}]
        conversation += [{"role": "user", "content": "No. Try again, with a number."}]
    conversation += [{"role": "assistant", "content": turns[2]}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    rendered_ids = tokenizer(rendered, add_special_tokens=False).input_ids
    episode = out.prompt_ids[0][out.prompt_mask[0].bool()].tolist() + out.ids[0].tolist()
    assert rendered_ids[: len(episode)] == episode
    assert tokenizer.decode(rendered_ids[len(episode) :]) == "\n"
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(episode)


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\ntools: {{ tools | map(attribute='function.name') | join(',') }}"
    "<|im_end|>\n{% endif %}" + CHAT_TEMPLATE
)


def test_the_environments_tools_reach_a_template_that_shows_them(parts):
    from lit_rl.environments import calculate

    tokenizer = parts[0]
    tokenizer.chat_template = TOOL_TEMPLATE
    episodes = Episodes(partial(Calculator, [calculate]), max_turns=1)
    out, _ = run(parts, ["5"], episodes, [ROW])
    prompt = tokenizer.decode(out.prompt_ids[0][out.prompt_mask[0].bool()])
    assert prompt.startswith("<|im_start|>system\ntools: calculate<|im_end|>\n<|im_start|>user\n")


def test_the_turns_of_an_episode_batch_gather_and_wake_once(parts):
    # Under FSDP2 each gather of the whole weights is a collective, and a GPU engine's wake
    # moves its weights and KV cache back: once per rollout, not once per turn.
    from contextlib import contextmanager

    tokenizer, model = parts
    events = []

    class Counting(TurnEngine):
        def wake(self):
            events.append("wake")

        def sleep(self):
            events.append("sleep")

    @contextmanager
    def gathered(policy):
        events.append("gather")
        yield policy

    engine = Counting(tokenizer, ["4", "6", "5"])
    episodes = Episodes(Guess, max_turns=3)
    sampler = EpisodeSampler(
        engine, model, tokenizer, (tokenizer.eos_token_id,), SamplingParams(8), episodes, gathered
    )
    batch = {"input_ids": torch.zeros(1, 1, dtype=torch.long), **{k: [v] for k, v in ROW.items()}}
    out = sampler.rollouts(batch, 2, version=0)
    assert out.stats["turns"].tolist() == [3.0, 3.0] and len(engine.requests) == 3
    assert events == ["gather", "wake", "sleep"]
