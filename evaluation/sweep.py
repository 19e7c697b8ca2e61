"""The records of the checkpoint sweep (`python -m sde_lib.run eval`): one JSON file per result of
one stage (test loss, bits/dim, FID) of one checkpoint, reused only for the same work.

A record's key is the digest (`evaluation.bits_per_dim.run_key`) of the stage, the checkpoint's
identity (its step and SHA-256, `source_identity`: not its name or path), the config less the
sections that do not change that stage's number (`config_for_stage`) and every setting that does
(batch size, seed, image count, the bits/dim flags, the sampler's options and seeds, the feature
extractor and the reference statistics). The file is `<folder>/records/<stage>_<key>.json`, so
the same bytes under another name find their record, while a rewritten `checkpoint_k.pth` or
another setting gets a key, and a file, of its own: records of other work are never read for
this one, and never replaced.
"""

import json
import math
import os

from evaluation.bits_per_dim import run_key
from sde_base.fileio import read_json, write_json

STAGES = ("loss", "bpd", "fid")
FORMAT = "score-sde-toolkit eval record, version 1"
RECORDS = "records"

# Config sections that do not change a stage's number (their relevant values, such as
# eval.batch_size or the sampler's resolved options, are in the stage's settings instead).
NOT_IN_KEY = {"loss": ("eval", "sampling", "device"), "bpd": ("eval", "sampling", "device"),
              "fid": ("eval", "device", "seed")}


class RecordError(ValueError):
    """A file where a record should be that is not one (unreadable, or of another key)."""


def config_for_stage(config, stage):
    """The config (as JSON data) less the sections that do not change `stage`'s number."""
    from configs import to_plain
    data = json.loads(json.dumps(to_plain(config), default=str))
    for name in NOT_IN_KEY[stage]:
        data.pop(name, None)
    return data


def stage_key(stage, checkpoint, config, settings):
    """The key of `stage`'s result for the checkpoint identity `checkpoint` (a dict), the
    `config` (an ml_collections config) and `settings` (JSON data)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return run_key(stage=stage, checkpoint=checkpoint, config=config_for_stage(config, stage),
                   settings=settings)


def record_path(folder, stage, key):
    return os.path.join(folder, RECORDS, f"{stage}_{key}.json")


def read_record(folder, stage, key):
    """The record of `stage` under `key` in `folder`, or None when there is none. A file in its
    place that is not that record is a RecordError naming it (it is never replaced)."""
    path = record_path(folder, stage, key)
    try:
        record = read_json(path, FORMAT, "an eval record")
    except ValueError as e:
        raise RecordError(f"{e}; move it aside") from None
    if record is not None and (record.get("key"), record.get("stage")) != (key, stage):
        raise RecordError(f"{path} is not the eval record of {stage} under key {key}; move it "
                          f"aside")
    return record


def write_record(folder, stage, key, provenance, result):
    """Write the record (atomically, valid JSON: NaN as null). Returns (path, record)."""
    record = {"format": FORMAT, "stage": stage, "key": key, "provenance": provenance,
              "result": result}
    return write_json(record_path(folder, stage, key), record, default=str), record


def _number(value, digits=4):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(rows):
    """One readable table of a sweep: checkpoint, step, loss, bits/dim +- standard error, FID
    and the stages whose result was reused. `rows`: dicts with name, step, loss, bpd,
    bpd_stderr, fid, reused (a list of stage names); a missing value shows as '-'."""
    head = ["checkpoint", "step", "loss", "bits/dim", "FID", "reused"]
    body = []
    for r in rows:
        bpd = "-" if r.get("bpd") is None else \
            f"{_number(r['bpd'])} +- {_number(r.get('bpd_stderr'))}"
        body.append([str(r["name"]), str(r["step"]), _number(r.get("loss"), 5), bpd,
                     _number(r.get("fid"), 3), ", ".join(r.get("reused") or []) or "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [head, ["-" * w for w in widths], *body]]
    return "\n".join(lines)
