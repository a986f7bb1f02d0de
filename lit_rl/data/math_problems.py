"""The embedded default data: procedural grade-school math word problems with integer answers.

Deterministic for a seed, generated in milliseconds, no download. Several templates cover
addition, subtraction, multiplication, division and two-step problems. The test split is drawn
with its own seed and removed from the training split, so held-out accuracy is held out.
"""

import random
from collections.abc import Callable

NAMES = [
    "Ava",
    "Ben",
    "Chen",
    "Dana",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "stamps",
    "shells",
    "cards",
]

Problem = dict[str, str]
Template = Callable[[random.Random], tuple[str, int]]


def _add(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 30), rng.randint(2, 20)
    return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b


def _subtract(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    b = rng.randint(2, 15)
    a = b + rng.randint(1, 20)
    return f"{name} had {a} {item} and gave away {b}. How many {item} does {name} have left?", a - b


def _multiply(rng: random.Random) -> tuple[str, int]:
    item = rng.choice(ITEMS)
    a, b = rng.randint(2, 10), rng.randint(2, 5)
    return f"A box holds {a} {item}. How many {item} are in {b} boxes?", a * b


def _divide(rng: random.Random) -> tuple[str, int]:
    item = rng.choice(ITEMS)
    each, kids = rng.randint(2, 10), rng.randint(2, 5)
    total = each * kids
    return (
        f"{total} {item} are shared equally among {kids} children. "
        f"How many {item} does each child get?",
        each,
    )


def _two_step(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 20), rng.randint(2, 10)
    c = rng.randint(1, a)
    return (
        f"{name} has {a} {item}, buys {b} more, then loses {c}. "
        f"How many {item} does {name} have now?",
        a + b - c,
    )


def _price(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(NAMES)
    price, count = rng.randint(2, 10), rng.randint(2, 5)
    return (
        f"A pen costs {price} dollars. How many dollars does {name} pay for {count} pens?",
        price * count,
    )


def _sum(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return f"What is {a} + {b}?", a + b


TEMPLATES: dict[str, Template] = {
    "add": _add,
    "subtract": _subtract,
    "multiply": _multiply,
    "divide": _divide,
    "two_step": _two_step,
    "price": _price,
    "sum": _sum,  # bare "What is a + b?": the task TRL's reference run on this machine used
}
# The word problems; "sum" is opt-in (templates=["sum"]) for comparisons with that run.
DEFAULT_TEMPLATES = ["add", "subtract", "multiply", "divide", "two_step", "price"]


def generate_problems(num: int, seed: int, templates: list[str] | None = None) -> list[Problem]:
    """``num`` problems ``{"question", "answer", "template"}`` drawn with ``seed``; answers are
    integer strings. Templates cycle in order so every split has the same mix."""
    names = templates or DEFAULT_TEMPLATES
    unknown = sorted(set(names) - set(TEMPLATES))
    if unknown:
        raise ValueError(f"unknown math templates {unknown}: choose from {sorted(TEMPLATES)}")
    rng = random.Random(seed)
    problems = []
    for i in range(num):
        name = names[i % len(names)]
        question, answer = TEMPLATES[name](rng)
        problems.append({"question": question, "answer": str(answer), "template": name})
    return problems


def train_test_split(
    num_train: int,
    num_test: int,
    train_seed: int = 0,
    test_seed: int = 1,
    templates: list[str] | None = None,
) -> tuple[list[Problem], list[Problem]]:
    """Train and test splits drawn with their own seeds; no test question appears in train."""
    test = generate_problems(num_test, test_seed, templates)
    held_out = {p["question"] for p in test}
    train: list[Problem] = []
    seed = train_seed
    while len(train) < num_train:
        batch = generate_problems(num_train, seed, templates)
        train.extend(p for p in batch if p["question"] not in held_out)
        seed += 10_000  # a fresh stream if filtering left the split short
    return train[:num_train], test
