"""`alignlab sample`: n samples per prompt from a model, optionally scored, written as JSON lines.

The prompts come from a data file of any shape that has them (``data/prompts.py``: only the prompt
is read) or from a testbed task's prompt sets. A generator from ``make_generator`` (any backend)
samples them, and a scorer from ``load_scorer`` (any spec) may score the samples. The output has
one row per prompt, in the prompts' order:

    prompt       the prompt as read: a string, or a conversation (a list of messages)
    completions  the non-empty responses, in the order drawn (to a conversation, each is one
                 assistant message)
    scores       with a scorer, the score of each of those responses
    samples      every sample in the order drawn, empty ones too: its text, num_tokens (the tokens
                 generated, the end-of-sequence token included), finished (it stopped on the
                 end-of-sequence token), logprobs (one per token, under the model's own distribution:
                 ``Sample.logprobs``), sampling_logprobs (under the distribution it was drawn from,
                 only where the backend reports them) and, with a scorer, its score (null for an
                 empty response, which is not scored)
    input_row    where the prompt came from: its row in the file, or its place (from 1) in the
                 task's prompt set

prompt, completions and scores are a ranked row: `alignlab convert ranked-to-pairs` makes pairs of
the output, `ranked-to-sft` best-of-n SFT data, and the ranked methods train on it as it is; the
readers ignore samples and input_row. An empty (or blank) response is no valid response in any
data shape, so it is left out of completions (as `alignlab feedback` leaves it out); a row left
with fewer than two responses is no ranked list, and `alignlab convert` names it (``--skip-invalid``
skips it).

Chunks and resume. The prompts go ``batch_size`` at a time: a chunk is sampled, scored, then
appended to the output and flushed, so a run killed at any point loses at most the chunk it was
on. Beside the output, ``OUT.jsonl.meta.json`` records what decides the rows: the model, where the
prompts came from and a hash of them, the sampling options, the backend, the batch size, the
scorer and the dtype. The same command run again resumes: it refuses other settings (in one line
naming the option that differs), cuts off a partly written last line, and goes on with the next
prompt. Every chunk tells the generator the index of its first prompt (``start``): a backend that
draws from one random stream per (seed, prompt index, sample index) ("native", "vllm";
``numbers_prompts``) gives each prompt the samples of one call over the whole file, whatever
``batch_size``. Another ("hf") draws each chunk with a seed derived from ``seed`` and the index
of its first prompt (``hf.stream_seed``). Chunks always start at multiples of ``batch_size``; a chunk cut short is
sampled whole again and only its missing rows are written. So a resumed file equals an
uninterrupted one row for row whenever the backend gives the same samples for the same call (both
do, on the same machine and device), even when a prompt's samples depend on its batch neighbours,
as the "hf" backend's do: a chunk always holds the same prompts. A backend whose samples change from call to call (an engine
with state of its own, nondeterministic kernels) resumes with rows that are valid samples but not
the same ones.

A larger ``limit`` (or none) on the same output extends it: the same settings otherwise, and the
first prompts those it answered (``extended_from``). The rows written are kept byte for byte and
the run goes on after them as a resume does (the chunk the earlier limit cut short is sampled whole
and only its missing rows are written). So the file holds the samples one run of the larger limit
draws wherever a prompt's draws do not depend on its batch ("native", "vllm"; the log-probs of that
short chunk may differ in their last bits, batched arithmetic); with "hf" that chunk's rows are the
earlier run's draws. A smaller limit is refused as any other change: a run never deletes rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.data.prompts import load_prompts
from alignlab.data.records import PromptRecord, Text, is_conversation
from alignlab.data.write import check_not_input
from alignlab.errors import ArgumentParser, UserError, on_command_line, option
from alignlab.field_flags import add_field_flags, field_values
from alignlab.rewards.base import reward_prompt
from alignlab.rewards.guard import find_fault, whole_call

if TYPE_CHECKING:  # generation imports torch: only when a command samples
    from alignlab.generation import SamplingParams

FORMAT = 1  # of the output rows and the sidecar; a rerun of another format is refused
META_SUFFIX = ".meta.json"
PROMPT_SETS = ("eval", "train")
SAMPLING_HELP = {
    "max_new_tokens": "most tokens generated per sample",
    "temperature": "sampling temperature; 0 is greedy decoding (then the n samples of a prompt agree)",
    "top_p": "nucleus sampling: draw from the most likely tokens whose probabilities add up to top_p, in (0, 1]",
    "top_k": "draw from the k most likely tokens; 0 keeps them all",
    "seed": "seed of the draws (with the hf backend each chunk of --batch-size prompts draws with a seed derived "
            "from it)",
    "stop_token_ids": "token ids that also end a sample (kept in it, which counts as finished), besides the "
                      "tokenizer's end-of-sequence token",
}


def _flag(name: str) -> str:
    """How the caller names option ``name``: ``--top-p`` on the command line, ``top_p`` from Python."""
    return "--" + name.replace("_", "-") if on_command_line() else name


def default_backend() -> str | None:
    """The backend ``make_generator`` uses when none is named."""
    import inspect

    from alignlab.generation import make_generator

    return inspect.signature(make_generator).parameters["backend"].default


@dataclass(frozen=True)
class SampleJob:
    """What decides the rows of an output file: the sidecar records it (``record``), and a rerun
    that resumes the file must repeat it. ``backend`` None is ``make_generator``'s default."""

    model: str
    params: SamplingParams
    n: int = 4
    prompts: str | None = None
    task: str | None = None
    prompt_set: str = "eval"
    prompt_column: str | None = None
    split: str | None = None
    limit: int | None = None
    backend: str | None = None
    batch_size: int = 16
    scorer: str | None = None
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        from alignlab.generation.factory import check_backend
        from alignlab.models import DTYPES

        if self.backend is None:
            object.__setattr__(self, "backend", default_backend())
        if (self.prompts is None) == (self.task is None):
            raise UserError(f"give the prompts with one of {_flag('prompts')} (a data file) or {_flag('task')} (a "
                            "testbed task), " + ("not both" if self.prompts else "got neither"))
        for name in ("n", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{_flag(name)} must be a whole number >= 1, got {value}")
        if self.task is not None:
            from alignlab.tasks import get_task

            get_task(self.task)
            for name in ("prompt_column", "split"):
                if getattr(self, name) is not None:
                    raise UserError(f"{_flag(name)} applies to {_flag('prompts')}, not to a task's prompts")
            if self.prompt_set not in PROMPT_SETS:
                raise UserError(f"{_flag('prompt_set')} must be one of {', '.join(PROMPT_SETS)}, got "
                                f"'{self.prompt_set}'")
            if self.prompt_set == "train" and self.limit is None:
                raise UserError(f"{_flag('prompt_set')} train draws a task's training prompts: say how many with "
                                f"{_flag('limit')}")
        elif self.prompt_set != "eval":
            raise UserError(f"{_flag('prompt_set')} applies to {_flag('task')}, not to a prompt file")
        if self.scorer is not None and not self.scorer.strip():
            raise UserError(f"{_flag('scorer')} is empty; give a scorer spec (e.g. task:arithmetic), or leave it out "
                            "to write the samples unscored")
        if self.dtype not in DTYPES:
            raise UserError(f"{_flag('dtype')} must be one of {', '.join(sorted(DTYPES))}, got '{self.dtype}'")
        if self.backend is not None:
            check_backend(self.backend)

    def record(self) -> dict[str, Any]:
        """The settings as the sidecar keeps them: the model and the prompt file as absolute paths
        where they are local, the sampling options flat."""
        from alignlab.models import resolve_source

        prompts = self.prompts
        if prompts is not None and Path(prompts).expanduser().exists():
            prompts = str(Path(prompts).expanduser().resolve())
        settings = {"model": resolve_source(self.model), "prompts": prompts, "task": self.task,
                    "prompt_set": self.prompt_set if self.task else None, "prompt_column": self.prompt_column,
                    "split": self.split, "limit": self.limit, "n": self.n, **asdict(self.params),
                    "backend": self.backend, "batch_size": self.batch_size, "scorer": self.scorer, "dtype": self.dtype}
        return json.loads(json.dumps(settings))  # as it reads back from the sidecar (a tuple as a list)


def read_prompts(job: SampleJob) -> list[PromptRecord]:
    """The job's prompts: the first ``limit`` of its file, or of its task's eval set, or ``limit``
    training prompts of its task drawn with the job's seed."""
    if job.prompts is not None:
        return load_prompts(job.prompts, prompt_column=job.prompt_column, split=job.split, limit=job.limit)
    from alignlab.tasks import get_task

    task = get_task(job.task)
    if job.prompt_set == "train":
        texts = task.train_prompts(job.limit, job.params.seed)
    else:
        texts = task.eval_prompts()[:job.limit]
    where = f"task {job.task} ({job.prompt_set} prompts)"
    return [PromptRecord(t, source=where, row=i) for i, t in enumerate(texts, start=1)]


def plain(text: Text) -> str | list[dict[str, str]]:
    """A prompt or response as a row holds it: a string, or a list of {"role", "content"}."""
    return [m.as_dict() for m in text] if is_conversation(text) else text


def prompts_hash(prompts: Sequence[PromptRecord]) -> str:
    """sha256 of the prompts as rows hold them, in order: what a resumed run must find again."""
    text = json.dumps([plain(p.prompt) for p in prompts], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def output_row(prompt: PromptRecord, samples: Sequence[Any], scores: Sequence[float | None] | None) -> dict[str, Any]:
    """One prompt's row (see the module docstring); ``scores`` has one entry per sample (None for
    an empty one), or is None without a scorer."""
    keep = [j for j, s in enumerate(samples) if s.text.strip()]
    conversation = is_conversation(prompt.prompt)
    row: dict[str, Any] = {
        "prompt": plain(prompt.prompt),
        "completions": [[{"role": "assistant", "content": samples[j].text}] if conversation else samples[j].text
                        for j in keep],
    }
    if scores is not None:
        row["scores"] = [scores[j] for j in keep]
    row["samples"] = []
    for j, s in enumerate(samples):
        item = {"text": s.text, "num_tokens": len(s.token_ids), "finished": s.finished, "logprobs": list(s.logprobs)}
        if s.sampling_logprobs:
            item["sampling_logprobs"] = list(s.sampling_logprobs)
        if scores is not None:
            item["score"] = scores[j]
        row["samples"].append(item)
    row["input_row"] = prompt.row
    return row


# ---------------------------------------------------------------- the output file and its record


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + META_SUFFIX)


def _setting(key: str, value: object) -> str:
    """An option as a run had it, for a message: ``--key value``, or ``no --key`` (unset, or a flag off)."""
    if value is None or value is False:
        return f"no {_flag(key)}"
    return option(key, value)


def rows_kept_text(out: Path, rows: int) -> str:
    """What a run that stops after writing ``rows`` rows to ``out`` leaves, for its error message."""
    if not rows:
        return f"no row was written to {out}"
    return (f"1 row is in {out}, and the same command resumes after it" if rows == 1 else
            f"{rows} rows are in {out}, and the same command resumes after them")


def check_same_run(old: dict[str, Any], new: dict[str, Any], output: Path) -> None:
    """Refuse to add rows to ``output`` when its record ``old`` differs from this run's ``new``,
    naming the first option that differs."""
    restart = f"pass {option('overwrite')} to start over, or choose another {_flag('output')}"
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key == "format":
            raise UserError(f"{output} was written by another version of alignlab sample (format "
                            f"{old.get(key)}, not {value}); {restart}")
        if key in ("num_prompts", "prompts_sha256"):
            raise UserError(f"{output}: the prompts are not those it was started with (the input changed since: "
                            f"{key} differs in {meta_path(output).name}); {restart}")
        raise UserError(f"{output} was started with {_setting(key, old.get(key))}, this run has "
                        f"{_setting(key, value)}; rerun with the earlier options to resume it, or {restart}")


def rows_kept(output: Path, prompts: Sequence[PromptRecord]) -> int:
    """How many rows an earlier run wrote to ``output``. A row counts once its newline is written:
    a partly written last line is cut off the file. The last row must hold the prompt of its place."""
    if not output.exists():
        return 0
    count, end, last = 0, 0, b""
    with output.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            count, end, last = count + 1, end + len(line), line
    if end < output.stat().st_size:
        with output.open("r+b") as f:
            f.truncate(end)
    if count > len(prompts):
        raise UserError(f"{output} holds {count} rows but there are only {len(prompts)} prompts; it was changed "
                        f"after it was written: pass {option('overwrite')} to start over")
    if count:
        try:
            prompt = json.loads(last)["prompt"]
        except (ValueError, TypeError, KeyError):
            prompt = None
        if prompt != plain(prompts[count - 1].prompt):
            raise UserError(f"{output}, line {count}: not the row of prompt {count} (was the file changed after it "
                            f"was written?); pass {option('overwrite')} to start over")
    return count


def resume_point(output: Path, header: dict[str, Any], prompts: Sequence[PromptRecord]) -> int:
    """The rows of ``output`` an earlier run of the same settings (or of a smaller limit, which this
    run extends) wrote: all are kept (0 for a new file); a ``UserError`` when the file holds rows of
    other settings or of no recorded run."""
    meta = meta_path(output)
    has_rows = output.exists() and output.stat().st_size > 0
    if not has_rows:
        return 0
    if not meta.exists():
        raise UserError(f"{output} exists but {meta.name} does not: it was not written by alignlab sample (or its "
                        f"record was removed); pass {option('overwrite')} to replace it, or choose another "
                        f"{_flag('output')}")
    try:
        old = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{meta}: cannot read the record of the earlier run ({e}); pass {option('overwrite')} to "
                        "start over") from None
    old = old if isinstance(old, dict) else {}
    if "decode" in old:
        raise UserError(f"{output} was written by alignlab decode, not sample; pass {option('overwrite')} to start "
                        f"over, or choose another {_flag('output')}")
    answered = extended_from(old, header, prompts, output)
    if answered is None:
        # another setting than the limit is named first: a larger limit alone would be allowed
        check_same_run(*({k: v for k, v in d.items() if k not in _EXTENDED} for d in (old, header)), output)
        check_same_run(old, header, output)
        return rows_kept(output, prompts)
    # the rows written stay as they are; the chunk the earlier limit cut short is sampled whole
    # again with the prompts after it, and only its rows after them are written (as any resume does)
    return rows_kept(output, prompts[:answered])


# what a run with a larger --limit may change in the record of the run it extends
_EXTENDED = ("limit", "num_prompts", "prompts_sha256")


def extended_from(old: dict[str, Any], new: dict[str, Any], prompts: Sequence[PromptRecord],
                  output: Path) -> int | None:
    """The number of prompts the earlier run ``old`` answered when this run (``new``, its
    ``prompts``) extends it to more of them: the same settings but a larger ``--limit`` (or none),
    and the same first prompts; else None (``check_same_run`` judges it). A larger limit that
    draws other first prompts (a task's training prompts are drawn for the count asked) is a
    ``UserError``."""
    if any(old.get(k) != v for k, v in new.items() if k not in _EXTENDED):
        return None
    before, now = old.get("limit"), new["limit"]
    answered = old.get("num_prompts")
    if before is None or (now is not None and now <= before) or not isinstance(answered, int):
        return None
    if answered > len(prompts) or prompts_hash(prompts[:answered]) != old.get("prompts_sha256"):
        raise UserError(f"{output} was started with {_setting('limit', before)}; with {_setting('limit', now)} its "
                        f"first {answered} prompts are not those it answered, so it cannot be extended: rerun with "
                        f"{_setting('limit', before)}, or pass {option('overwrite')} to start over")
    return answered


def _write_meta(path: Path, header: dict[str, Any]) -> None:
    """Write the record atomically: a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(header, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- checks before sampling


def check_context(generator, model, tokenizer, prompts: Sequence[PromptRecord], max_new_tokens: int,
                  framing: str = "") -> None:
    """Refuse a prompt that, with ``max_new_tokens`` after it, does not fit the model's context,
    naming its row; ``framing`` says what the generator adds to each prompt (e.g. " with urial's
    in-context prefix"), as the message should show it after the prompt's length."""
    from alignlab.generation.native import context_length

    limit = context_length(getattr(model, "config", None), tokenizer)
    if limit is None:
        return
    context, source = limit
    for p in prompts:
        length = len(generator.prompt_ids(p.prompt))
        if length >= context:
            raise UserError(f"{p.source}, row {p.row}: the prompt is {length} tokens{framing}, and the model's context is "
                            f"{context} tokens ({source}): no room is left for a response")
        if length + max_new_tokens > context:
            raise UserError(f"{p.source}, row {p.row}: the prompt is {length} tokens{framing}, and with "
                            f"{option('max_new_tokens', max_new_tokens)} the samples would run past the model's "
                            f"context of {context} tokens ({source}); lower {_flag('max_new_tokens')} to at most "
                            f"{context - length}")


def score_chunk(scorer, spec: str, chunk: Sequence[PromptRecord], samples: Sequence[Sequence[Any]], start: int,
                n: int, written: str) -> list[list[float | None]]:
    """Each sample's score (None for an empty response), from one ``score_sampled`` call over the
    chunk (with each sample's token count).

    When that call fails (raises, or gives other than one finite number per sample), each sample
    is scored alone to find the one at fault, and a ``UserError`` names it: its prompt (index and
    row), its index and the error; ``written`` says which rows are already in the output.
    """
    where = [(i, j) for i, row in enumerate(samples) for j, s in enumerate(row) if s.text.strip()]
    scores: list[list[float | None]] = [[None] * len(row) for row in samples]
    if not where:
        return scores
    values, error = whole_call(lambda: scorer.score_sampled([reward_prompt(chunk[i].prompt) for i, _ in where],
                                                            [samples[i][j].text for i, j in where],
                                                            [len(samples[i][j].token_ids) for i, j in where]),
                               len(where))
    if values is not None:
        for (i, j), value in zip(where, values, strict=True):
            scores[i][j] = value
        return scores

    def alone(k: int):
        i, j = where[k]
        return scorer.score_sampled([reward_prompt(chunk[i].prompt)], [samples[i][j].text],
                                    [len(samples[i][j].token_ids)])

    fault = find_fault(alone, len(where))
    if fault is not None:
        (i, j), problem = where[fault[0]], fault[1]
        p = chunk[i]
        raise UserError(f"{_flag('scorer')} {spec} failed on prompt {start + i + 1} ({p.source}, row {p.row}), "
                        f"sample {j + 1} of {n}: {problem}; {written}")
    raise UserError(f"{_flag('scorer')} {spec} failed on prompts {start + 1} to {start + len(chunk)} together, though "
                    f"on none of their samples alone: {error}; {written}")


# ---------------------------------------------------------------- the run


def run_sample(job: SampleJob, output: str | os.PathLike[str], *, trust_remote_code: bool = False,
               device: str | None = None, overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Sample ``job`` into ``output`` (a .jsonl file), resuming what an earlier run of the same job
    left there (see the module docstring) unless ``overwrite``. ``device``: where the model runs
    (default: cuda when there is one, else cpu). Returns what was done: the output, its rows, the
    rows an earlier run had written (resumed_at), the rows written now, and the mean score of the
    scored samples (None without a scorer)."""
    from tqdm.auto import tqdm

    from alignlab import generation
    from alignlab.models import load_model, load_tokenizer

    out = Path(output)
    if out.suffix.lower() != ".jsonl":
        raise UserError(f"{_flag('output')} {out}: samples are written as JSON lines; name the file *.jsonl")
    check_not_input(out, ("the prompt file", _flag("prompts"), job.prompts))
    prompts = read_prompts(job)
    header = {"format": FORMAT, **job.record(), "num_prompts": len(prompts), "prompts_sha256": prompts_hash(prompts)}
    kept = 0 if overwrite else resume_point(out, header, prompts)
    result: dict[str, Any] = {"output": str(out), "rows": len(prompts), "resumed_at": kept, "written": 0,
                              "mean_score": None}
    if kept == len(prompts):
        return result
    scorer = _load_scorer(job.scorer, job.params.max_new_tokens) if job.scorer else None
    tokenizer = load_tokenizer(job.model, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise UserError(f"{_flag('model')} {job.model}: the tokenizer has no end-of-sequence token (eos_token_id is "
                        "None), so no sample could end before the token limit; give a model whose tokenizer sets one")
    model = load_model(job.model, dtype=job.dtype, trust_remote_code=trust_remote_code)
    job.params.check_stops(model, _flag("stop_token_ids"))
    model.to(device or _default_device())
    generator = generation.make_generator(model, tokenizer, job.backend, batch_size=job.batch_size * job.n)
    check_context(generator, model, tokenizer, prompts, job.params.max_new_tokens)

    meta = meta_path(out)
    try:
        handle = out.open("w" if overwrite else "a", encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write: {e.strerror or e}") from None
    total, count = 0.0, 0
    bar = tqdm(total=len(prompts), initial=kept, unit="prompt", desc=f"sampling {job.n} per prompt",
               dynamic_ncols=True, disable=not progress)
    with handle, bar:
        for start in range(kept // job.batch_size * job.batch_size, len(prompts), job.batch_size):
            chunk = prompts[start:start + job.batch_size]
            samples = generator.generate([p.prompt for p in chunk], job.n, job.params, start=start)
            scores = None
            if scorer is not None:
                done = kept + result["written"]
                written = rows_kept_text(out, done)
                scores = score_chunk(scorer, job.scorer, chunk, samples, start, job.n, written)
                found = [s for i, row in enumerate(scores) if start + i >= kept for s in row if s is not None]
                total, count = total + sum(found), count + len(found)
            lines = [json.dumps(output_row(p, samples[i], None if scores is None else scores[i]), ensure_ascii=False,
                                allow_nan=False) + "\n"
                     for i, p in enumerate(chunk) if start + i >= kept]
            try:
                if not result["written"]:  # this run's first rows: its record (only now: a run that
                    # fails before it writes leaves the record of the run it extends as it was)
                    if overwrite or not meta.exists() or json.loads(meta.read_text(encoding="utf-8")) != header:
                        _write_meta(meta, header)
                handle.write("".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            except (OSError, ValueError) as e:
                raise UserError(f"{out}: cannot write: {getattr(e, 'strerror', None) or e}") from None
            result["written"] += len(lines)
            bar.update(len(lines))
    result["mean_score"] = total / count if count else None
    return result


def _load_scorer(spec: str, max_new_tokens: int):
    """The scorer of ``--scorer``; it scores samples, so ``overlong`` may count their tokens."""
    from alignlab.rewards import load_scorer

    try:
        return load_scorer(spec, sampled=True, max_new_tokens=max_new_tokens)
    except UserError as e:
        raise UserError(f"{_flag('scorer')} {spec}: {e}") from None


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- the command


def _sampling_params(values: dict[str, Any]):
    """``SamplingParams`` from flag values; its error names the flag (``--top-p``), not the field."""
    from alignlab.generation import SamplingParams

    try:
        return SamplingParams(**values)
    except UserError as e:
        field, _, rest = str(e).partition(" ")
        if field in values:
            raise UserError(f"{_flag(field)} {rest}") from None
        raise


def _parser() -> argparse.ArgumentParser:
    from alignlab.generation import SamplingParams
    from alignlab.models import DTYPES
    from alignlab.tasks import task_names

    parser = ArgumentParser(
        prog="alignlab sample",
        description="Sample n responses per prompt from a model (a local directory or a hub name), optionally "
                    "score them, and write one JSON line per prompt. Rerun the same command to resume a run that "
                    "stopped.",
        epilog="Each row: prompt; completions (the non-empty responses, in the order drawn); scores (with --scorer); "
               "samples (every sample: text, num_tokens, finished, logprobs, sampling_logprobs where the backend "
               "gives them, score); input_row. prompt, completions and scores make a ranked row: `alignlab "
               "convert ranked-to-pairs OUT.jsonl PAIRS.jsonl` makes pairs, `alignlab convert ranked-to-sft "
               "OUT.jsonl SFT.jsonl` best-of-n SFT data. Beside OUT.jsonl, OUT.jsonl.meta.json records the "
               "settings; a rerun with other settings is refused.",
        allow_abbrev=False,
    )
    parser.add_argument("--model", required=True, help="model to sample from: a local directory or a hub name")
    parser.add_argument("--prompts", default=None, help="data file (or dataset directory, or hub dataset) whose "
                                                        "prompts are answered: rows of any shape with a prompt "
                                                        "(only the prompt is read)")
    parser.add_argument("--task", default=None, help=f"answer a testbed task's prompts instead: {', '.join(task_names())}")
    parser.add_argument("--prompt-set", default="eval", choices=PROMPT_SETS,
                        help="with --task: its held-out eval prompts (default), or --limit training prompts drawn "
                             "with --seed")
    parser.add_argument("--prompt-column", default=None, help="with --prompts: the column that holds the prompt "
                                                              "(default prompt)")
    parser.add_argument("--split", default=None, help="with --prompts: split of a dataset directory or hub dataset")
    parser.add_argument("--output", required=True, help="the .jsonl file to write (and to resume)")
    parser.add_argument("-n", "--n", type=int, default=4, help="samples per prompt (default 4)")
    add_field_flags(parser, SamplingParams, "sample", helps=SAMPLING_HELP)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts sampled, scored and written together "
                                                                   "(a chunk) (default 16)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts")
    parser.add_argument("--backend", default=default_backend(),
                        help=f"generation backend (default {default_backend()})")
    parser.add_argument("--scorer", default=None, help="score the samples: rm:DIR, task:NAME[:gold|proxy], "
                                                       "fn:MODULE:FUNCTION, bleu:REFS.jsonl, judge:DIR, "
                                                       "overlong:cache=N[,max=M] (max by default --max-new-tokens), "
                                                       "... (see alignlab.rewards)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights' dtype (default fp32)")
    parser.add_argument("--device", default=None, help="where the model runs (default cuda when there is one, "
                                                       "else cpu)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model "
                                                                         "directory or hub to run")
    parser.add_argument("--overwrite", action="store_true", help="start over, replacing the output and its record")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def cmd_sample(tokens: list[str]) -> int:
    """Run `alignlab sample`; prints where it wrote and what. Bad input is a ``UserError``."""
    from transformers.utils import logging as hf_logging

    from alignlab.generation import SamplingParams

    args = _parser().parse_args(tokens)
    hf_logging.disable_progress_bar()  # a bar for loading the weights would only crowd the sampling bar
    job = SampleJob(model=args.model, params=_sampling_params(field_values(args, SamplingParams, "sample")), n=args.n,
                    prompts=args.prompts, task=args.task, prompt_set=args.prompt_set, prompt_column=args.prompt_column,
                    split=args.split, limit=args.limit, backend=args.backend, batch_size=args.batch_size,
                    scorer=args.scorer, dtype=args.dtype)
    result = run_sample(job, args.output, trust_remote_code=args.trust_remote_code, device=args.device,
                        overwrite=args.overwrite, progress=not args.no_progress)
    if not result["written"]:
        print(f"{args.output} already holds all {result['rows']} rows; nothing to do (--overwrite samples again)")
        return 0
    resumed = f", resumed after row {result['resumed_at']}" if result["resumed_at"] else ""
    score = f"; mean score {result['mean_score']:.4f}" if result["mean_score"] is not None else ""
    print(f"wrote {result['written']} rows to {args.output} ({result['rows']} in all{resumed}){score}")
    return 0
