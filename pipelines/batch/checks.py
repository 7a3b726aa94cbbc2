"""The checks of a `LabelJob` that touch the outside world, run on the driver before any Ray work.

The method must exist, the model reference must resolve (a hub id must be in
the local Hugging Face cache: `restore.hub.resolve_model_path`), the input
must exist and hold at least one file (the check stops at the first one), the
questions file must load, and the output must accept a probe object; each
failure is a `JobConfigError` naming the URI and saying what to do. Local
paths (input, output, questions, model) are made absolute here, on the
driver, before the job travels to workers whose working directory differs.
Nothing here lists the whole input: `listing.plan_units` keeps one entry per
manifest or sub-folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipelines.batch import listing
from pipelines.batch.config import JobConfigError, LabelJob
from pipelines.media.decode import SourceError
from pipelines.media.storage import OutputStore, filesystem, is_remote


@dataclass
class Prepared:
    """A checked job (local paths absolute), its read units and its questions (vqa with a questions file)."""

    job: LabelJob
    units: list[listing.Unit]
    questions: list[str] | None


def absolute(job: LabelJob) -> LabelJob:
    """The job with local input/output/questions/model paths made absolute (workers have another cwd)."""
    update = {}
    for field in ("input", "output", "questions"):
        value = getattr(job, field)
        if value and not is_remote(value):
            update[field] = os.path.abspath(os.path.expanduser(value.removeprefix("file://")))
    ref = job.model
    if not ref.startswith(("random:", "s3://")) and ref != "default" and os.path.exists(os.path.expanduser(ref)):
        update["model"] = os.path.abspath(os.path.expanduser(ref))
    return job.model_copy(update=update) if update else job


def validate_before_start(job: LabelJob) -> Prepared:
    """Check method, model, input, questions and output without Ray. Raises JobConfigError naming the URI at fault."""
    try:
        job.reduction()
    except ValueError as err:
        raise JobConfigError(f"method: {err}") from None
    job = absolute(job)
    check_model(job)
    try:
        units = listing.plan_units(job.input, job.endpoint_url, job.storage_options)
        found = listing.has_any_input(units, job)
    except (FileNotFoundError, SourceError) as err:
        raise JobConfigError(f"input: {err}") from None
    except Exception as err:  # backend errors (no such bucket, denied): say which URI
        raise JobConfigError(f"input {job.input} cannot be listed: {type(err).__name__}: {err}") from None
    if not found:
        exts = " ".join(listing.extensions(job.kind))
        raise JobConfigError(f"input {job.input} lists no {job.kind} files (looked for {exts})")
    questions = None
    if job.task == "vqa":
        if job.questions:
            try:
                questions = listing.load_questions(job.questions, job.endpoint_url, job.storage_options)
            except (FileNotFoundError, SourceError) as err:
                raise JobConfigError(f"questions: {err}") from None
        elif job.prompt is None and not all(u.kind == "manifest" for u in units):
            raise JobConfigError(
                f"task vqa needs a question for every input ({job.input} is not a manifest): pass --questions "
                "FILE.jsonl, a manifest with a 'question' column, or --prompt QUESTION"
            )
    try:
        OutputStore(job.output, job.endpoint_url, job.storage_options).check_writable()
    except PermissionError as err:
        raise JobConfigError(str(err)) from None
    return Prepared(job, units, questions)


def check_model(job: LabelJob) -> None:
    """Raise JobConfigError unless `job.model` names a model that exists (random:ARCH always does)."""
    ref = job.model
    if ref.startswith("random:"):
        return
    if ref.startswith("s3://"):
        fs, path = filesystem(ref, job.endpoint_url, job.storage_options)
        try:
            found = fs.exists(path)
        except Exception as err:  # a missing bucket raises instead of returning False
            raise JobConfigError(f"model {ref} cannot be checked: {type(err).__name__}: {err}") from None
        if not found:
            raise JobConfigError(f"model {ref} does not exist; pass --model with an s3:// prefix holding the model")
        return
    from restore.hub import resolve_model_path

    if ref.startswith(("/", ".", "~")) and not os.path.exists(os.path.expanduser(ref)):
        # resolve_model_path would take a missing folder for a hub id; the actors would fail later.
        raise JobConfigError(f"model {ref} does not exist; pass --model with a model directory, s3://, or random:ARCH")
    try:
        resolve_model_path(ref)  # a hub id not in the local HF cache fails here, before Ray starts
    except FileNotFoundError as err:
        raise JobConfigError(f"model: {err}") from None
