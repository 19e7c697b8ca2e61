"""Bits/dim of a dataset split with resumable records (`evaluation.bits_per_dim`), on the bundled
digits with an exact-score oracle as the "model": batching, per-image seeds, resuming, records
keyed by the work that produced them, one writer per file, non-finite numbers refused."""

import json
import math
import multiprocessing
import os

import pytest
import torch
from ml_collections import ConfigDict

from cases import counting_gaussian_score
from evaluation.bits_per_dim import RecordsMismatch, evaluate_split, run_key, source_identity
from sde_base.fileio import WorkdirLock
from training.data import load_dataset

SETTINGS = dict(data_range=(0.0, 1.0), batch_size=3, seed=42, levels=17, n_probes=2,
                rtol=1e-3, atol=1e-3, progress=False)


def digits():
    c = ConfigDict({"data": {"dataset": "DIGITS", "image_size": 8, "num_channels": 1,
                             "centered": False}})
    return load_dataset(c, "test")


@pytest.fixture
def score():
    """The exact score of a Gaussian on [0, 1]^64 under the VP SDE, counting its calls."""
    return counting_gaussian_score(0.3, 0.1, (1, 8, 8))


def lines(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def test_records_resume_and_are_keyed(tmp_path, score):
    fn, sde = score
    ds, out = digits(), tmp_path / "bpd.jsonl"
    first_summary = evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=2,
                                   **SETTINGS)
    first = lines(out)  # one record per image, in (repeat, image) order
    assert [(r["repeat"], r["image"], r["batch"]) for r in first] == \
        [(0, i, i // 3) for i in range(6)]
    assert all(r["key"] == "k1" and r["nfe"] > 0 and r["eps"] == 1e-5 for r in first)
    bpd = torch.tensor([r["bpd"] for r in first], dtype=torch.float64)
    assert first_summary["num_images"] == 6
    assert first_summary["bpd"] == pytest.approx(bpd.mean().item())
    assert first_summary["bpd_stderr"] == pytest.approx(bpd.std().item() / math.sqrt(6))
    assert 0 < first_summary["bpd"] < 12

    # Resume: the recorded images are kept as they are, only batch 2 is computed.
    calls = fn.calls
    evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=3, **SETTINGS)
    second = lines(out)
    assert second[:6] == first and [r["image"] for r in second[6:]] == [6, 7, 8]
    assert fn.calls > calls

    # Per-image seeds make a recomputed batch identical.
    out.write_text("".join(json.dumps(r) + "\n" for r in second[:3] + second[6:]))
    calls = fn.calls
    evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=3, **SETTINGS)
    assert lines(out) == second and fn.calls > calls
    calls = fn.calls  # nothing left to do: no evaluation at all
    evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=3, **SETTINGS)
    assert fn.calls == calls

    # Records of other work (another key) are never reused: refused, file untouched ...
    before = out.read_text()
    with pytest.raises(RecordsMismatch, match="not reused"):
        evaluate_split(fn, sde, ds, out=str(out), key="k2", num_batches=3, **SETTINGS)
    assert out.read_text() == before
    # ... unless replaced on purpose.
    evaluate_split(fn, sde, ds, out=str(out), key="k2", num_batches=1, fresh=True, **SETTINGS)
    assert [r["key"] for r in lines(out)] == ["k2"] * 3
    # Per-batch records of the older format are refused too, never misread.
    out.write_text(json.dumps({"batch": 0, "bpd": [1.0, 2.0], "key": "k2"}) + "\n")
    with pytest.raises(RecordsMismatch, match="older format"):
        evaluate_split(fn, sde, ds, out=str(out), key="k2", num_batches=1, **SETTINGS)


def test_the_key_follows_the_checkpoint_contents_not_its_name(tmp_path):
    import configs
    from networks import create_model, save_checkpoint
    config = configs.load_config("builtin/digits_ve", ["model.nf=8", "model.num_scales=50"])
    a = tmp_path / "checkpoint.pth"
    torch.manual_seed(0)
    save_checkpoint(a, create_model(config), config, step=400)
    k1 = run_key(checkpoint=source_identity(a), settings={"eps": 1e-5})
    torch.manual_seed(1)
    save_checkpoint(a, create_model(config), config, step=400)  # same name and step
    k2 = run_key(checkpoint=source_identity(a), settings={"eps": 1e-5})
    assert k1 != k2
    assert k2 != run_key(checkpoint=source_identity(a), settings={"eps": 1e-3})
    assert k2 == run_key(settings={"eps": 1e-5}, checkpoint=source_identity(a))
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"one")
    d1 = source_identity(folder)
    (folder / "weights.bin").write_bytes(b"two")
    assert source_identity(folder) != d1


def test_bad_sizes_and_nonfinite_numbers_are_errors(tmp_path, score):
    fn, sde = score
    ds, out = digits(), tmp_path / "x.jsonl"
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_split(fn, sde, ds, out=str(out), key="k", **dict(SETTINGS, batch_size=0))
    with pytest.raises(ValueError, match="num_batches"):
        evaluate_split(fn, sde, ds, out=str(out), key="k", num_batches=0, **SETTINGS)

    def nan_score(x, t):
        return torch.full_like(x, float("nan"))

    with pytest.raises((FloatingPointError, ValueError, RuntimeError)):
        evaluate_split(nan_score, sde, ds, out=str(out), key="k", num_batches=1, **SETTINGS)
    assert not out.exists() or out.read_text() == ""


def test_data_off_the_declared_grid_is_refused(tmp_path, score):
    fn, sde = score
    with pytest.raises(ValueError, match="256-level grid"):
        evaluate_split(fn, sde, digits(), out=str(tmp_path / "x.jsonl"), key="k",
                       num_batches=1, **dict(SETTINGS, levels=256))


def _hold(folder, ready, done):
    with WorkdirLock(folder):
        ready.set()
        done.wait(30)


def test_one_writer_per_records_folder(tmp_path, score):
    """A second evaluation writing the same file is refused with the holder's pid; the file
    stays whole."""
    fn, sde = score
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            evaluate_split(fn, sde, digits(), out=str(tmp_path / "conc.jsonl"), key="k",
                           num_batches=1, **SETTINGS)
    finally:
        done.set()
        holder.join(30)
    evaluate_split(fn, sde, digits(), out=str(tmp_path / "conc.jsonl"), key="k", num_batches=1,
                   **SETTINGS)
    assert len(lines(tmp_path / "conc.jsonl")) == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_bound_records_are_keyed_and_bound_the_ode(tmp_path, score):
    """The same split by the bound (fixed cost: n_samples calls per image) and by the ODE."""
    fn, sde = score
    ds = digits()
    kw = dict(SETTINGS, n_probes=4)
    ode = evaluate_split(fn, sde, ds, out=str(tmp_path / "ode.jsonl"), key="ode", num_batches=2,
                         **kw)
    calls = fn.calls
    settings = {k: v for k, v in SETTINGS.items() if k not in ("n_probes", "rtol", "atol")}
    bnd = evaluate_split(fn, sde, ds, out=str(tmp_path / "bound.jsonl"), key="bound",
                         num_batches=2, method="bound", n_samples=16, **settings)
    assert fn.calls - calls == 2 * 16  # one call per draw per batch
    recs = lines(tmp_path / "bound.jsonl")
    assert len(recs) == 6 and all(r["method"] == "bound" and r["dequantize"] == "uniform"
                                  and r["nfe"] == 16 for r in recs)
    # An upper bound on the model's NLL: not below the ODE's estimate beyond the noise.
    assert bnd["bpd"] > ode["bpd"] - 3 * math.hypot(bnd["bpd_stderr"], ode["bpd_stderr"])


def test_files_the_toolkit_did_not_write_are_never_replaced(tmp_path, score):
    """--fresh replaces only a records file; the summary JSON beside the records replaces only
    a summary: both are refused before any evaluation, the files untouched."""
    fn, sde = score
    ds, out = digits(), tmp_path / "prec.jsonl"
    notes = tmp_path / "prec.json"  # somebody's file that shares the records' stem
    notes.write_text('{"precision": 0.93}')
    with pytest.raises(ValueError, match="prec.json exists and is not a bits/dim summary"):
        evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=1, **SETTINGS)
    assert notes.read_text() == '{"precision": 0.93}' and fn.calls == 0
    notes.unlink()
    out.write_text("name,score\nx,1\n")  # not records: refused with or without --fresh
    for fresh in (False, True):
        with pytest.raises(ValueError, match="not a bits/dim record"):
            evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=1, fresh=fresh,
                           **SETTINGS)
        assert out.read_text() == "name,score\nx,1\n" and fn.calls == 0
    out.unlink()
    evaluate_split(fn, sde, ds, out=str(out), key="k1", num_batches=1, **SETTINGS)
    (tmp_path / "prec.json").write_text(json.dumps({"bpd": 1.0, "key": "k1",
                                                     "records": str(out)}))
    evaluate_split(fn, sde, ds, out=str(out), key="k2", num_batches=1, fresh=True, **SETTINGS)
    assert [r["key"] for r in lines(out)] == ["k2"] * 3  # its own files are replaced


def test_a_huge_repeat_count_is_refused_before_any_work(tmp_path, score):
    fn, sde = score
    out = tmp_path / "bpd.jsonl"
    with pytest.raises(ValueError, match=r"repeats = 100000000 over 2 images is 200,000,000 "
                                         r"records.*lower --repeats or --num-images"):
        evaluate_split(fn, sde, digits(), out=str(out), key="k", repeats=10 ** 8, num_images=2,
                       **SETTINGS)
    assert fn.calls == 0 and not out.exists()
