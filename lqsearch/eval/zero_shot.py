"""Zero-shot accuracy through lm-eval-harness, on the in-memory model.

With the hub: the paper's six tasks (``PAPER_TASKS``). Offline: ``enwiki_next_sentence``, a
local YAML task written from the enwiki-sample evaluation part: given a sentence, pick the
sentence that follows it among four (the true one and three drawn from other articles).
Score per task: ``acc_norm`` where the task has it, else ``acc``; the average is a plain mean.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lqsearch.data.corpora import load_text
from lqsearch.errors import ConfigError

PAPER_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "lambada_openai")
NEXT_SENTENCE_TASK = "enwiki_next_sentence"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _prose_sentences(article: str) -> list[str]:
    """Sentences of the prose lines of an article (headings, lists and tables left out)."""
    lines = [line.strip() for line in article.splitlines()]
    prose = [line for line in lines if len(line) > 80 and not line.startswith(("=", ";", ":", "*", "|", "{", "!"))]
    return [s for line in prose for s in _SENTENCE.split(line) if 40 <= len(s) <= 300 and "==" not in s]


def write_next_sentence_task(folder: Path, examples: int = 200, seed: int = 0) -> str:
    """Write ``enwiki_next_sentence`` (YAML and jsonl) into ``folder``; returns the task name."""
    articles = [a for a in load_text("enwiki-sample", "evaluation").split("\n\n") if len(a) > 200]
    sentences = [_prose_sentences(a) for a in articles]
    pairs = [(i, s[j], s[j + 1]) for i, s in enumerate(sentences) for j in range(len(s) - 1)]
    rng = random.Random(seed)
    rows = []
    for article, context, following in rng.sample(pairs, min(examples, len(pairs))):
        others = [s for i, ss in enumerate(sentences) if i != article for s in ss]
        choices = rng.sample(others, 3) + [following]
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "label": choices.index(following)})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{NEXT_SENTENCE_TASK}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{NEXT_SENTENCE_TASK}.yaml").write_text(
        f"task: {NEXT_SENTENCE_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return NEXT_SENTENCE_TASK


def zero_shot(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    task_folder: Path | None = None,
    limit: int | None = None,
    max_length: int = 2048,
    batch_size: int = 8,
) -> dict[str, float]:
    """Accuracy per task (``acc_norm`` if reported, else ``acc``) and their ``mean``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_folder) if task_folder else None)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
    try:
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)["results"]
    except Exception as err:  # lm-eval raises many types for a task whose data it cannot reach
        raise ConfigError(f"lm-eval could not run {tasks} ({type(err).__name__}: {err}); offline, use --tasks {NEXT_SENTENCE_TASK}") from err
    scores = {}
    for task in tasks:
        metrics = results[task]
        scores[task] = metrics.get("acc_norm,none", metrics.get("acc,none"))
    scores["mean"] = sum(scores.values()) / len(tasks)
    return scores
