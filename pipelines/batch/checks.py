"""The checks of a `LabelJob` that touch the outside world, run before any Ray work.

The input must list at least one file, the questions file must load, the
output must accept a probe object, and the model reference must exist; each
failure is a `JobConfigError` naming the URI and saying what to do.
"""

from __future__ import annotations

import os

from pipelines.batch import listing
from pipelines.batch.config import JobConfigError, LabelJob
from pipelines.media.decode import SourceError
from pipelines.media.storage import OutputStore, filesystem


def validate_before_start(job: LabelJob) -> list[dict]:
    """Check inputs, questions, output and model without Ray; return the listing rows {id, uri, question}.

    Raises JobConfigError naming the URI at fault.
    """
    try:
        job.reduction()
    except ValueError as err:
        raise JobConfigError(f"method: {err}") from None
    try:
        rows = listing.list_inputs(job.input, job.kind, job.endpoint_url, job.storage_options, job.limit)
    except (FileNotFoundError, SourceError) as err:
        raise JobConfigError(f"input: {err}") from None
    except Exception as err:  # backend errors (no such bucket, denied): say which URI
        raise JobConfigError(f"input {job.input} cannot be listed: {type(err).__name__}: {err}") from None
    if not rows:
        exts = " ".join(listing.EXTENSIONS[job.kind])
        raise JobConfigError(f"input {job.input} lists no {job.kind} files (looked for {exts})")
    if job.task == "vqa":
        if job.questions:
            try:
                questions = listing.load_questions(job.questions, job.endpoint_url, job.storage_options)
            except (FileNotFoundError, SourceError) as err:
                raise JobConfigError(f"questions: {err}") from None
            rows = listing.with_questions(rows, questions)
        elif job.prompt is None and any(r["question"] is None for r in rows):
            missing = next(r["uri"] for r in rows if r["question"] is None)
            raise JobConfigError(
                f"task vqa needs a question for every input ({missing} has none): pass --questions FILE.jsonl, "
                "a manifest with a 'question' column, or --prompt QUESTION"
            )
    try:
        OutputStore(job.output, job.endpoint_url, job.storage_options).check_writable()
    except PermissionError as err:
        raise JobConfigError(str(err)) from None
    check_model(job)
    return rows


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
        resolve_model_path(ref)
    except FileNotFoundError as err:
        raise JobConfigError(f"model: {err}") from None
