"""verifiers environments hosted by lit_rl, their own code unchanged.

``VerifiersEnvironment`` plays a verifiers environment's own episodes (``Env.run_episode``: its
``run``, its agents, its scoring) as a lit_rl ``LoopEnvironment``. Every model call the
environment's agent makes reaches an OpenAI-compatible endpoint lit_rl serves on loopback for
the episode, answered by the policy through ``await model(messages)``: token in, token out,
one engine batch for all episodes waiting on the model. The episode's reward is verifiers'
own (its trace's). ``VerifiersRows`` gives the environment's tasks as rows, by index.
``ChatHarness`` is an in-process chat loop a taskset can export as its harness where
verifiers' own harnesses (programs launched through uv) are not wanted. Install with
``pip install lit_rl[verifiers]``.
"""

import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lit_rl.data.sources import Row, RowSource, Split
from lit_rl.environments import EpisodeResult, EpisodeTruncated, LoopEnvironment, Model, Turn
from lit_rl.integrations import missing

try:
    import verifiers.v1 as vf
    from aiohttp import web
    from openai import AsyncOpenAI
    from verifiers.v1.dialects.chat import message_to_wire
except ImportError as error:
    raise ImportError(missing("verifiers", "verifiers")) from error

INDEX = "task_index"  # the row field naming the environment's task
MODEL_NAME = "lit_rl-policy"
# verifiers reads the upstream's API key from an environment variable; loopback needs none.
KEY_VARIABLE = "LIT_RL_VERIFIERS_KEY"
os.environ.setdefault(KEY_VARIABLE, "lit_rl")


class ChatHarness(vf.Harness[vf.HarnessConfig]):
    """verifiers' agent program as a chat loop in this process: one chat call per segment,
    through the rollout's interception endpoint (verifiers' contract: every model call goes
    through it; a harness may run in-process). Export a subclass from a taskset's module to
    make it the taskset's default harness."""

    APPENDS_SYSTEM_PROMPT = True
    SUPPORTS_RESUME = True
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(
        self,
        ctx: "vf.ModelContext",
        trace: Any,
        runtime: Any,
        endpoint: str,
        secret: str,
        mcp_urls: dict[str, str],
        data: "vf.TaskData",
        **_: Any,
    ) -> "vf.ProgramResult":
        system, prompt = self.resolve_prompt(data)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        if isinstance(prompt, str):
            messages.append({"role": "user", "content": prompt})
        else:
            messages += [message_to_wire(message) for message in prompt or []]
        async with AsyncOpenAI(base_url=endpoint, api_key=secret, max_retries=0) as client:
            await client.chat.completions.create(model=ctx.model, messages=messages)
        return vf.ProgramResult(exit_code=0, stdout="", stderr="")


def importable(env_dir: str | None) -> None:
    """Make the modules in ``env_dir`` importable by their names: verifiers imports a taskset
    (and its environment and harness) by its id as a top-level module, so an environment that
    is a file in the user's project, not an installed package, is found there."""
    if env_dir is None:
        return
    folder = Path(env_dir).resolve()
    if not folder.is_dir():
        raise ValueError(
            f"env_dir {env_dir!r} is not a folder: give the folder holding the environment's "
            "module (its taskset id is the module's name), or leave env_dir out for an "
            "installed environment"
        )
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _tasks(environment: "vf.Env", first: int, count: int) -> list[Any]:
    """Tasks ``first`` .. ``first + count - 1`` of the environment's taskset (a taskset may be
    infinite: it is read no further)."""
    return list(itertools.islice(iter(environment.taskset), first, first + count))


class VerifiersRows(RowSource):
    """A verifiers environment's tasks as rows: ``{"task_index": i, "prompt": ...}`` (the
    prompt's text, for logging; the environment poses its own). Training takes tasks 0 ..
    ``num_train - 1``, validation the next ``num_val``.

    Args:
        config: verifiers' environment config, as ``vf.resolve_env_config`` takes it
            (``{taskset: {id: ...}, <agent role>: {...}}``).
        num_train: training tasks.
        num_val: validation tasks.
        env_dir: a folder holding the taskset's module, for an environment that is not an
            installed package (``importable``).
    """

    def __init__(
        self,
        config: dict[str, Any],
        num_train: int = 1000,
        num_val: int = 50,
        env_dir: str | None = None,
    ) -> None:
        importable(env_dir)
        self.config, self.num_train, self.num_val = config, num_train, num_val

    def rows(self, split: Split) -> list[Row]:
        environment = vf.load_environment(vf.resolve_env_config(self.config))
        first, count = (0, self.num_train) if split == "train" else (self.num_train, self.num_val)
        tasks = _tasks(environment, first, count)
        return [
            {INDEX: first + offset, "prompt": str(task.data.prompt)}
            for offset, task in enumerate(tasks)
        ]


class VerifiersEnvironment(LoopEnvironment):
    """One episode of a verifiers environment, its task the row's ``task_index``.

    The environment is loaded from its config for each episode (``Env.serving`` keeps its
    servers on the environment object, so concurrent episodes each need their own) and its
    ``run_episode`` runs unchanged against ``model``. Reward: verifiers' trace reward; metrics:
    its trace metrics. An episode lit_rl cuts short (its turns or tokens spent) ends as
    verifiers ends one whose model call fails: unscored. Set the agent's own ``max_turns``
    to lit_rl's ``max_turns`` so verifiers stops the turns itself and scores the episode.

    Args:
        config: verifiers' environment config (as ``VerifiersRows``).
        env_dir: a folder holding the taskset's module (as ``VerifiersRows``).
    """

    def __init__(self, config: dict[str, Any], env_dir: str | None = None) -> None:
        importable(env_dir)
        self.config = config
        vf.resolve_env_config(config)  # a bad config fails when the recipe is read

    async def run(self, row: Row, seed: int, model: Model) -> EpisodeResult:
        environment = vf.load_environment(vf.resolve_env_config(self.config))
        (task,) = _tasks(environment, int(row[INDEX]), 1)
        truncated: list[EpisodeTruncated] = []
        async with _loopback_chat(model, truncated) as base_url:
            client = vf.EvalClientConfig(base_url=base_url, api_key_var=KEY_VARIABLE)
            context = vf.ModelContext(model=MODEL_NAME, client=client)
            async with environment.serving():
                episode = await environment.run_episode(task, context)
        if truncated:
            raise truncated[0]  # lit_rl ended it: the episode is truncated, unscored
        if not episode.ok or len(episode.traces) != 1:
            errors = [f"{e.type}: {e.message[:300]}" for e in episode.errors]
            errors += [f"{e.type}: {e.message[:300]}" for t in episode.traces for e in t.errors]
            raise RuntimeError(
                f"verifiers episode of task {row[INDEX]} failed ({len(episode.traces)} traces; "
                f"errors: {errors or 'none'}): lit_rl hosts single-agent environments whose "
                "episodes complete"
            )
        (trace,) = episode.traces
        metrics = {name: float(value) for name, value in (trace.metrics or {}).items()}
        return EpisodeResult(reward=float(trace.reward), metrics=metrics)


@asynccontextmanager
async def _loopback_chat(model: Model, truncated: list[EpisodeTruncated]) -> AsyncIterator[str]:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 answered by ``model``; its
    base URL. A call past the episode's budget is refused (HTTP 400) and its
    ``EpisodeTruncated`` kept in ``truncated``."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat_handler(model, truncated))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()


def _chat_handler(
    model: Model, truncated: list[EpisodeTruncated]
) -> Callable[["web.Request"], Awaitable["web.Response"]]:
    async def chat(request: "web.Request") -> "web.Response":
        body = await request.json()
        messages = [
            {"role": m["role"], "content": _text(m.get("content"))} for m in body["messages"]
        ]
        try:
            turn = await model(messages)
        except EpisodeTruncated as error:
            truncated.append(error)
            return web.json_response({"error": {"message": str(error)}}, status=400)
        return web.json_response(_completion(body.get("model", MODEL_NAME), turn))

    return chat


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _completion(model_name: str, turn: Turn) -> dict[str, Any]:
    """``turn`` as an OpenAI chat completion (what verifiers validates)."""
    return {
        "id": f"lit_rl-{id(turn)}",
        "object": "chat.completion",
        "created": 0,
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop" if turn.stopped else "length",
                "message": {"role": "assistant", "content": turn.text},
            }
        ],
    }
