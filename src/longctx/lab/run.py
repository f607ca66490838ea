"""`longctx lab SPEC`: build the tokenizer and the shared training set, train every family on it
(one process per worker, one thread each), evaluate each trained model through the normal runner,
and write the report.

Everything lives in the lab's folder (runs/lab/<name>/ by default):
  spec.json                 the spec the weights were trained under
  tokenizer/                the word-level tokenizer
  train_data.pt             the training batches every family sees, in the same order
  models/<family>/          checkpoint + tokenizer, done.json (summary), training_curve.csv,
                            state.json (inference state bytes per length), eval.sqlite (run database)
  report/                   tables, figures, report.html, lab.md
Re-running resumes: a finished family is skipped, an interrupted one continues from its last
checkpoint, and evaluation continues from its run database.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import shutil
from pathlib import Path

from ..errors import UsageError
from ..files import set_aside
from .spec import LabSpec
from .train import save_atomic, write_json_atomic

IDS = dict(pad_token_id=0, unk_token_id=1, bos_token_id=2, eos_token_id=3)  # vocab.SPECIALS order


def prepare(spec: LabSpec, new: bool = False) -> Path:
    """Create or reopen the lab folder; refuse to mix weights trained under another spec."""
    out = spec.out_dir
    if new and out.exists():
        set_aside(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "spec.json"
    if stamp.exists():
        old = json.loads(stamp.read_text())
        if old.get("training_identity") != spec.training_identity():
            raise UsageError(f"{out} holds models trained under a different spec; use --new to start over "
                             "(the old folder is kept) or set out: to another folder")
    write_json_atomic(stamp, json.loads(spec.to_json()) | {"training_identity": spec.training_identity()})
    return out


def ensure_tokenizer(out: Path):
    from .vocab import build_tokenizer

    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").exists():
        tmp = out / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tokenizer(tmp)
        os.replace(tmp, folder)
    return folder


def ensure_data(spec: LabSpec, out: Path, tokenizer_dir: Path, progress=None) -> Path:
    from .data import build_batches

    path = out / "train_data.pt"
    if not path.exists():
        save_atomic(build_batches(spec.tasks(), spec.min_length, spec.train_length, spec.steps, spec.batch,
                                  seed=spec.seed + 1_000_000, tokenizer_dir=tokenizer_dir, progress=progress), path)
    return path


def family_job(spec: LabSpec, name: str, events=None, threads: int = 1) -> dict:
    """Train (or resume) one family, measure its inference state, evaluate it; returns done.json."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    # Workers share the terminal with the progress bars: no per-load bars or kernel-fallback notices.
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    out = spec.out_dir
    mdir = out / "models" / name

    def emit(*event):
        if events is not None:
            events.put((name, *event))

    if not (mdir / "done.json").exists():
        _train_family(spec, name, out, mdir, emit)
    summary = json.loads((mdir / "done.json").read_text())
    emit("train", spec.steps, None)
    if not (mdir / "state.json").exists():
        write_json_atomic(mdir / "state.json", _measure_state(mdir, spec))
    _evaluate(spec, name, mdir, emit)
    return summary


def _train_family(spec: LabSpec, name: str, out: Path, mdir: Path, emit) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    from .families import family, fit_family
    from .train import TrainSettings, train, write_done

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out / "tokenizer"))
    config, n_params = fit_family(name, len(tokenizer), spec.hidden_size, spec.params, spec.train_length, IDS,
                                  spec.rope_theta)
    config.longctx_train_length = spec.train_length  # read back by the hf backend as the training context
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    batches = torch.load(out / "train_data.pt", weights_only=False)
    settings = TrainSettings(steps=spec.steps, lr=spec.lr, warmup=spec.warmup, seed=spec.seed)
    summary = train(model, batches, mdir, settings, progress=lambda step, point: emit("train", step, point))
    model.generation_config = GenerationConfig(eos_token_id=IDS["eos_token_id"], pad_token_id=IDS["pad_token_id"])
    model.save_pretrained(str(mdir))
    tokenizer.save_pretrained(str(mdir))
    fam = family(name)
    write_done(mdir, summary | {"family": name, "architecture": fam.label, "kind": fam.kind,
                                "non_embedding_params": n_params, "train_length": spec.train_length,
                                "threads": torch.get_num_threads()})


def _measure_state(mdir: Path, spec: LabSpec) -> dict:
    from transformers import AutoModelForCausalLM

    from .families import state_bytes

    model = AutoModelForCausalLM.from_pretrained(str(mdir)).eval()
    return {str(n): state_bytes(model, n) for n in spec.eval_lengths}


def eval_run_spec(spec: LabSpec, name: str, mdir: Path):
    from ..config import ModelSpec, RunSpec

    return RunSpec(name=f"{spec.name}-{name}", models=(ModelSpec(name, "hf", {"path": str(mdir.resolve()),
                                                                              "batch_size": spec.eval_batch_size}),),
                   tasks=tuple(spec.eval_tasks()), lengths=spec.eval_lengths, samples=spec.samples, seed=spec.eval_seed,
                   depths=spec.depths, db=str(mdir / "eval.sqlite"), batch=spec.eval_batch_size)


def _evaluate(spec: LabSpec, name: str, mdir: Path, emit) -> None:
    import dataclasses

    from ..runner import run
    from ..store import RunStore
    from ..why.run import run_why

    run_spec = eval_run_spec(spec, name, mdir)
    db = Path(run_spec.db)
    store = RunStore(db)
    stored = store.meta("identity")
    if stored is not None and stored != run_spec.identity():
        # Evaluation settings (lengths, depths, formats) or the generator changed: the trained
        # model stays; its evaluation starts over, the old one kept as eval.sqlite.old-N.
        store.close()
        set_aside(db, *(db.with_name(db.name + s) for s in ("-wal", "-shm")))
        store = RunStore(db)
    try:
        store.bind(run_spec.to_json(), run_spec.identity())
        run(run_spec, store, progress=lambda model, label, n: emit("eval", n, label))
        # The evidence beside the accuracy (longctx why): needle attention for the attention
        # families, state statistics for the recurrent ones, the rotary table; on each cell's
        # first samples (the same samples as the evaluation's).
        run_why(dataclasses.replace(run_spec, samples=min(run_spec.samples, WHY_SAMPLES)), store, LAB_DIAGNOSTICS)
    finally:
        store.close()


WHY_SAMPLES = 2
LAB_DIAGNOSTICS = ("attention", "state", "state_decay", "rope")


def eval_total(spec: LabSpec) -> int:
    return len(spec.eval_tasks()) * len(spec.depths) * len(spec.eval_lengths) * spec.samples


def run_lab(spec: LabSpec, new: bool = False, on_event=None) -> Path:
    """Train and evaluate every family of `spec`, then write the report; returns the report folder.

    `on_event(family, kind, value, info)` is called from the main process for progress: kind is
    "train" (value = steps done, info = the latest curve point) or "eval" (value = samples added).
    """
    from .report import write_lab_report

    out = prepare(spec, new)
    tokenizer_dir = ensure_tokenizer(out)
    ensure_data(spec, out, tokenizer_dir)
    if spec.workers == 1 or len(spec.families) == 1:
        events = _Inline(on_event)
        for name in spec.families:
            family_job(spec, name, events, threads=max(1, (os.cpu_count() or 1) if spec.workers == 1 else 1))
    else:
        _run_pool(spec, on_event)
    return write_lab_report(spec)


class _Inline:
    def __init__(self, on_event):
        self.on_event = on_event

    def put(self, event) -> None:
        if self.on_event:
            self.on_event(*event)


def _run_pool(spec: LabSpec, on_event) -> None:
    """Families in parallel, one single-threaded process each (two 1-thread processes beat one
    2-thread process for models this small)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from .families import family

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        events = manager.Queue()
        with ProcessPoolExecutor(max_workers=spec.workers, mp_context=ctx) as pool:
            # Longest jobs first, so the two workers finish close together.
            order = sorted(spec.families, key=lambda name: -family(name).cost)
            pending = {pool.submit(family_job, spec, name, events) for name in order}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, on_event)
                for f in done:
                    f.result()  # re-raise a worker's error here
        _drain(events, on_event)


def _drain(events, on_event) -> None:
    while True:
        try:
            event = events.get_nowait()
        except queue_mod.Empty:
            return
        if on_event:
            on_event(*event)
