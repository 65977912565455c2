"""Command line: subcommands -> plain functions, one explicit map.

`peftlab run` flags are generated from the config dataclasses, so `--help` documents
every field and cannot drift from the code. User mistakes end in one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings

from peftlab import __version__
from peftlab.config import (
    ON_OFF_AUTO,
    PRECISIONS,
    SECTIONS,
    RunConfig,
    apply_mapping,
    coerce,
    field_path,
    field_type,
    flag_name,
    flags_by_path,
    iter_fields,
    load_yaml,
    set_path,
)
from peftlab.errors import PeftlabError


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    groups = {name: parser.add_argument_group(f"{name} settings") for name in SECTIONS}
    groups["run"] = parser.add_argument_group("run settings")
    for owner, name, f in iter_fields(defaults):
        path = field_path(defaults, owner, name)
        section = path.split(".")[0] if "." in path else "run"
        flag = "--" + flag_name(f)
        default = getattr(owner, name)
        shown = ",".join(default) if isinstance(default, list) else default
        choices = f.metadata.get("choices")
        allowed = f"one of: {', '.join(map(str, choices))}; " if choices else ""
        help_text = f.metadata["help"].replace("%", "%%") + f" [{path}; {allowed}default: {shown}]"
        kwargs = {"dest": path, "default": argparse.SUPPRESS, "help": help_text}
        if choices and all(isinstance(c, str) for c in choices):
            kwargs["choices"] = choices  # numeric choices are checked after typing
        if field_type(owner, name) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices == ON_OFF_AUTO:
            kwargs.update(nargs="?", const="on")  # the bare flag turns it on
        else:
            kwargs["metavar"] = name.upper()
        groups[section].add_argument(flag, **kwargs)


def build_config(args: argparse.Namespace) -> RunConfig:
    """Defaults <- YAML file <- flags, then validated once."""
    cfg = RunConfig()
    if args.config:
        apply_mapping(cfg, load_yaml(args.config), str(args.config))
    flags = flags_by_path()
    for path, value in vars(args).items():
        if path in flags:  # not --config, --resume, the command
            set_path(cfg, path, value, flags[path])
    from peftlab.runner.checks import checked

    return checked(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftlab.runner.pipeline import resume, run
    from peftlab.runner.report import before_after_table
    from peftlab.training.distributed import is_main

    if args.resume:
        given = [k for k in vars(args) if "." in k or k in ("out", "name")]
        if given or args.config:
            raise PeftlabError(
                "--resume continues a run with the config stored in its run.json; "
                f"drop the other settings ({', '.join(given) or '--config'})"
            )
        record = resume(args.resume)
    else:
        shared_dir = Path(args.shared_dir) if args.shared_dir else None
        reporter = trial_reporter(args.trial) if args.trial else None
        record = run(build_config(args), shared_dir=shared_dir, on_validation=reporter)
    if record.get("status") == "done" and is_main() and "after" in record:  # one summary
        print()
        print(before_after_table(record))
        print(f"\nrun directory: {record.run_dir} (run.json, report.md, adapter/)")
    return 0


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def trial_reporter(given: str):
    from peftlab.comparison.study import TrialReporter

    try:
        where = json.loads(given)
        return TrialReporter(where["storage"], where["study"], int(where["trial"]))
    except (ValueError, KeyError, TypeError):
        raise PeftlabError(
            f"--trial {given!r}: give the JSON object `peftlab compare` writes "
            '({"storage": URL, "study": NAME, "trial": NUMBER})'
        ) from None


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftlab.comparison.compare import compare, comparison_dir, execution_of, join, tuning_of
    from peftlab.comparison.compare_report import markdown_table, summary

    execution = execution_of(args.storage, args.jobs, args.study, args.heartbeat, flag)
    if args.worker:
        if args.methods or args.run_dirs:
            raise PeftlabError(
                "--worker runs the waiting runs of a comparison in --storage; drop --methods "
                "and run directories (start the comparison itself without --worker)"
            )
        out = Path(getattr(args, "out", None) or "runs/worker")
        out.mkdir(parents=True, exist_ok=True)
        ran = join(out, execution)
        print(f"worker done: ran {ran} run(s); nothing is left waiting")
        return 0
    methods = coerce(args.methods, list[str], "--methods") if args.methods else []
    seeds = coerce(args.seeds, list[int], "--seeds")
    fields = coerce(args.tune, list[str], "--tune") if args.tune else None
    tune = tuning_of(fields, args.trials, methods, flag)
    base = build_config(args)
    out = comparison_dir(base.out)
    board = compare(base, methods, seeds, out, [Path(d) for d in args.run_dirs], execution, tune)
    print()
    print(summary(board))
    print()
    print(markdown_table(board))
    print(f"\ncomparison: {out} (compare.json, compare.md, compare.html)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftlab.adapters.inference import Predictor, read_inputs
    from peftlab.adapters.package import open_package
    from peftlab.fsutil import write_text_atomic

    package = open_package(args.adapter, args.allow_pickle, base=args.base)
    inputs = list(args.texts)
    if args.input:
        columns = package.manifest.get("columns") or ["text"]
        inputs += read_inputs(Path(args.input), args.text_column or columns[0])
    if not inputs:
        raise PeftlabError("nothing to predict: give texts as arguments or --input FILE")
    if args.batch_size < 1:
        raise PeftlabError(f"--batch-size {args.batch_size}: use a number above 0")
    predictor = Predictor(
        package,
        base=args.base,
        use_adapter=not args.no_adapter,
        allow_pickle=args.allow_pickle,
        merged=not args.no_merge,
        compile=args.compile_inference,
    )
    results = predictor.predict(inputs, args.batch_size)
    lines = [
        json.dumps({"text": text, **result}, ensure_ascii=False)
        for text, result in zip(inputs, results, strict=True)
    ]
    if args.output:
        write_text_atomic(Path(args.output), "\n".join(lines) + "\n")
        print(f"{len(lines)} predictions ({predictor.name}) -> {args.output}")
    else:
        print("\n".join(lines))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftlab.adapters.merge import merge

    result = merge(Path(args.adapter), Path(args.out), args.base, args.tolerance)
    print(
        f"merged {result['method']} into {result['base_model']}: {args.out}\n"
        f"largest output difference, merged vs adapter: {result['max_abs_diff']:.3g} on "
        f"logits up to {result['logit_scale']:.3g}, {result['max_rel_diff']:.3g} of their "
        f"scale, over {result['inputs']} sample inputs (tolerance {args.tolerance:g})"
    )
    return 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def cmd_serve(args: argparse.Namespace) -> int:
    from peftlab.serving import Limits, parse_adapters, start

    for flag in ("port", "max_batch", "queue_size", "max_input_tokens", "max_new_tokens_limit"):
        value = getattr(args, flag)
        if value < (0 if flag == "port" else 1):
            raise PeftlabError(f"--{flag.replace('_', '-')} {value}: use a positive number")
    token = args.admin_token or os.environ.get("PEFTLAB_ADMIN_TOKEN")
    server = start(
        parse_adapters(args.adapter),
        base=args.base,
        host=args.host,
        port=args.port,
        admin_token=token,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        limits=Limits(args.max_input_tokens, args.max_new_tokens_limit),
        precision=args.precision,
    )
    models = ", ".join(row["id"] for row in server.engine.describe())
    print(f"serving {models} on {server.url}/v1 (admin {'on' if token else 'off'})", flush=True)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handlers it
    # found: no-ops here, so the command ends with "stopped" and 0 (a second Ctrl-C
    # while draining still forces the exit).
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in STOP_SIGNALS}
    try:
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from peftlab.data.assets import BUILTIN_MODELS, PINS

    for model in BUILTIN_MODELS.values():
        print(f"{model.name:14s} {model.description}  [{model.package}=={PINS[model.package]}]")
    print("\nAlso: a local folder written by save_pretrained, or a Hugging Face Hub id.")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from peftlab.data.assets import BUILTIN_DATASETS, PINS

    for ds in BUILTIN_DATASETS.values():
        print(f"{ds.name:16s} {ds.description}  [{ds.package}=={PINS[ds.package]}]")
    print("\nAlso: a local CSV/TSV/JSONL/JSON/Parquet file (--text-column, --label-column),")
    print("a folder of train/validation/test files, or a Hugging Face Hub dataset name.")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from peftlab.methods.registry import METHODS

    width = max(len(name) for name in METHODS)  # names line up, however long
    if args.spaces:
        from peftlab.comparison.tuning import FIELDS, space

        for method in METHODS:
            for name, r in space(method, list(FIELDS)).items():
                source = f"  ({r.source})" if r.source else ""
                print(f"{method:{width}s} {name:18s} {r.describe()}{source}")
        return 0
    for method in METHODS.values():
        merge = "merges" if not method.merge else "no merge"
        print(
            f"{method.name:{width}s} {method.family:13.13s} {merge:8s} "
            f"lr {method.default_lr:<7g} {method.description}"
        )
    from peftlab.methods.peft_tuners import NOT_REGISTERED

    print("\npeft tuners that are not methods here, and why:")
    for names, why in NOT_REGISTERED.items():
        print(f"  {names}: {why}")
    return 0


COMMANDS = {
    "compare": cmd_compare,
    "run": cmd_run,
    "predict": cmd_predict,
    "merge": cmd_merge,
    "serve": cmd_serve,
    "models": cmd_models,
    "datasets": cmd_datasets,
    "methods": cmd_methods,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftlab",
        description="Fine-tune a foundation model with a parameter-efficient method and "
        "measure what it gained.",
    )
    parser.add_argument("--version", action="version", version=f"peftlab {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = debug_flag_on_every(sub.add_parser)
    add_run_parser(sub)
    add_compare_parser(sub)
    add_predict_parser(sub)
    add_merge_parser(sub)
    add_serve_parser(sub)
    sub.add_parser("models", help="list the built-in models")
    sub.add_parser("datasets", help="list the built-in datasets")
    methods_parser = sub.add_parser("methods", help="list the fine-tuning methods")
    methods_parser.add_argument(
        "--spaces",
        action="store_true",
        help="list each method's search space for `compare --tune` (with its sources)",
    )
    return parser


def add_run_parser(sub) -> None:
    run_parser = sub.add_parser(
        "run",
        help="evaluate a base model, fine-tune it, evaluate again, write a run directory",
        description="Evaluate the base model on the test split, fine-tune it with a method, "
        "evaluate again, and write run.json, report.md and the adapter into the run "
        "directory. Tasks: classification (default), summarization, causal_lm (--task). "
        "Settings: defaults, then --config YAML (sections model/data/task/method/train), "
        "then flags.",
    )
    run_parser.add_argument("--config", metavar="YAML", help="YAML file of settings")
    run_parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    run_parser.add_argument(
        "--shared-dir",
        metavar="DIR",
        help="read (or compute once and write) the split data, its encoding and the base "
        "evaluation here; `peftlab compare` gives its runs one",
    )
    run_parser.add_argument(
        "--trial",
        metavar="JSON",
        help="a tuning trial of `peftlab compare --tune`: report each validation score to "
        'this Optuna trial ({"storage": URL, "study": NAME, "trial": NUMBER}) and stop when '
        "its pruner says so",
    )
    add_config_flags(run_parser)


def add_compare_parser(sub) -> None:
    compare_parser = sub.add_parser(
        "compare",
        help="run several methods x seeds on one task and build a leaderboard",
        description="Run every method x seed as its own run directory under --out, each in "
        "a process of its own (sharing one dataset, encoding and base evaluation through "
        "--out/shared), then write compare.json, compare.md and compare.html. The runs are "
        "trials of an Optuna study (--storage): --jobs runs several at once, and "
        "`peftlab compare --worker --storage URL` on other machines joins in. Finished runs "
        "are kept on a rerun and failed ones retried; a failing method is recorded and the "
        "rest go on. With --tune, every method first gets the same number of "
        "validation-only tuning trials; its best settings then run over --seeds beside its "
        "defaults. The leaderboard gives 95%% intervals, a paired test against the best, "
        "Pareto fronts and a recommendation. Existing run directories can be given to only "
        "build the report.",
    )
    compare_parser.add_argument(
        "run_dirs", nargs="*", metavar="RUN_DIR", help="finished run directories to include"
    )
    compare_parser.add_argument(
        "--methods", metavar="LIST", help="comma-separated methods, e.g. lora,ia3,full"
    )
    compare_parser.add_argument(
        "--seeds", default="0", metavar="LIST", help="comma-separated seeds (default: 0)"
    )
    compare_parser.add_argument("--config", metavar="YAML", help="YAML file of run settings")
    compare_parser.add_argument(
        "--tune",
        metavar="FIELDS",
        help="tune these settings per method before the final runs, e.g. lr or lr,lora_r: "
        "each method gets --trials validation-only trials (the test split is never looked "
        "at) from its own search space (`peftlab methods --spaces`), hopeless ones pruned "
        "(ASHA); its best settings then run over --seeds, beside its default settings",
    )
    compare_parser.add_argument(
        "--trials", type=int, metavar="K", help="with --tune: trials per method (default: 6)"
    )
    add_execution_arguments(compare_parser)
    add_config_flags(compare_parser)


def add_execution_arguments(parser) -> None:
    group = parser.add_argument_group("execution (each run is a process of its own)")
    group.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs at once here, splitting the "
        "cores between them (and one GPU each where there are GPUs); default: 1",
    )
    group.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage that records the runs (default: sqlite in --out); a database "
        "URL such as postgresql://user@host/db lets workers on other machines join",
    )
    group.add_argument(
        "--worker",
        action="store_true",
        help="join the comparison in --storage and run its waiting runs (under --out here) "
        "until none is left",
    )
    group.add_argument("--study", metavar="NAME", help="with --worker: which comparison")
    group.add_argument(
        "--heartbeat",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between a running run's heartbeats (a worker keeps its comparison's); "
        "a run silent for 4x this is retried by another worker (default: 30)",
    )


DEBUG_HELP = (
    "show the Python traceback of an unexpected error (by default one line on stderr, "
    "the traceback in the run directory's error.log or a temporary file)"
)


def debug_flag_on_every(add_parser):
    """`--debug` works before the command and after it."""

    def add(*args, **kwargs):
        parser = add_parser(*args, **kwargs)
        parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
        return parser

    return add


def add_adapter_arguments(parser) -> None:
    """The saved adapter a command works on, and the base model to put it on."""
    parser.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder")
    parser.add_argument("--base", metavar="MODEL", help="base model (default: the manifest's)")


def add_predict_parser(sub) -> None:
    parser = sub.add_parser(
        "predict",
        help="label or generate with a saved adapter (or the bare base model)",
        description="Load a saved adapter on its base model and predict: labels with "
        "probabilities for classification adapters, generated text for summarization and "
        "causal_lm ones. One JSON object per input, to stdout or --output.",
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="inputs to predict on")
    add_adapter_arguments(parser)
    parser.add_argument("--input", metavar="FILE", help="JSONL/CSV/TSV/Parquet/TXT of inputs")
    parser.add_argument("--text-column", metavar="NAME", help="input column of --input")
    parser.add_argument("--output", metavar="FILE", help="write JSONL here (atomically)")
    parser.add_argument(
        "--no-adapter", action="store_true", help="predict with the base model alone"
    )
    parser.add_argument(
        "--no-merge",
        action="store_true",
        help="keep the adapter separate; by default a method that folds exactly into the "
        "weights (lora, dora, ia3, bitfit) is merged after loading, which predicts faster",
    )
    parser.add_argument("--batch-size", type=int, default=16, metavar="N")
    parser.add_argument(
        "--compile-inference",
        action="store_true",
        help="label through a compiled forward (AOTInductor; a classification adapter whose "
        "run computed in fp32, on a CPU, from 256 inputs): compiled once per model "
        "structure (15-45 s), loaded in milliseconds later; same labels. It paid 1.09x on "
        "an AMX Xeon (1,000 texts); on other CPUs measure with bench/compiled_inference.py",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickled weight files")


def add_merge_parser(sub) -> None:
    parser = sub.add_parser(
        "merge",
        help="fold an adapter into its base: a standalone transformers model folder",
        description="Merge a saved adapter into its base model and write a model folder "
        "that plain transformers loads. The merged model is reloaded and its outputs are "
        "checked against the adapter's on sample inputs before the folder is written.",
    )
    add_adapter_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="merged model folder")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed output difference, merged vs adapter, as a share of the "
        "logits' largest magnitude (float rounding grows with it; default: 1e-4)",
    )


def add_serve_parser(sub) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve many adapters on one base model (OpenAI-compatible HTTP API)",
        description="Load one base model and any number of adapters, and answer "
        "GET /v1/models, POST /v1/completions, /v1/chat/completions (the adapter is the "
        "'model') and /v1/classify; GET /health and /metrics (Prometheus); with the "
        "admin token POST /admin/adapters, DELETE /admin/adapters/NAME and vLLM's "
        "/v1/load_lora_adapter and /v1/unload_lora_adapter. Concurrent requests for "
        "different adapters share one forward pass. Serves lora, dora, ia3, prompt, "
        "ptuning and prefix adapters (prompt-style ones on decoders), from peftlab runs or "
        "plain peft folders, and linear-head classifiers on their encoder. SIGTERM or "
        "Ctrl-C drains in-flight requests, then exits.",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        required=True,
        metavar="NAME=DIR",
        help="an adapter to serve under NAME (repeat for more)",
    )
    parser.add_argument("--base", metavar="MODEL", help="base model (default: the adapters')")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any)")
    parser.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="enables the admin endpoints (or set PEFTLAB_ADMIN_TOKEN)",
    )
    parser.add_argument("--max-batch", type=int, default=16, metavar="N", help="default: 16")
    parser.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="wait to fill a batch (default: 10)"
    )
    parser.add_argument(
        "--queue-size", type=int, default=256, help="waiting requests before 503 (default: 256)"
    )
    parser.add_argument(
        "--max-input-tokens",
        type=int,
        default=8192,
        help="longest accepted input; tasks still cut inputs to their max_length (default: 8192)",
    )
    parser.add_argument(
        "--max-new-tokens-limit", type=int, default=256, help="largest max_tokens (default: 256)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="bf16 autocast, fp32, or auto: bf16 where the hardware has native bf16 "
        "(default: auto)",
    )


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Library deprecation chatter is for library authors, not for peftlab users; so is
    # Optuna's note that heartbeats are "experimental" (they have been since 2.8).
    warnings.filterwarnings("ignore", message=".*experimental.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # bitsandbytes asks for an optional Hub-hosted kernel on every import; it falls back
    # to its own CPU code, and the Hub is often unreachable anyway.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import datasets
    import huggingface_hub
    import transformers

    # Retry chatter from an unreachable Hub would bury our one-line error.
    huggingface_hub.utils.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    from peftlab.comparison.child import bind_to_parent

    bind_to_parent()  # a comparison's child run dies with its worker
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("PEFTLAB_DEBUG") == "1"
    if args.command in ("run", "compare", "predict", "merge", "serve"):
        quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except PeftlabError as exc:
        print(f"peftlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftlab: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `peftlab methods | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own advice
        return 141  # what a shell reports for a process ended by SIGPIPE
    except Exception as exc:  # never a traceback for the user; kept in a file instead
        if debug:
            raise
        from peftlab.failure import one_line

        print(f"peftlab: error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, OSError) else 1


if __name__ == "__main__":
    sys.exit(main())
