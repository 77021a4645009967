"""What every job entry script shares: the Spark session, clean errors and ``--help``."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf
from pyspark.sql import SparkSession

from pipeline.config import CONF_DIR, RENAMED, Config, check, is_group
from pipeline.errors import PipelineError
from pipeline.spark import build_spark


def spark_for(cfg: DictConfig, app_name: str) -> SparkSession:
    logging.getLogger("py4j").setLevel(logging.WARNING)
    conf = OmegaConf.to_container(cfg.spark.conf, resolve=True)
    return build_spark(cfg.spark.master, conf, app_name=f"pinsage-{app_name}")


def job(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Wrap a job body: the whole config is checked first (:func:`pipeline.config.check`), and
    any error becomes one line on stderr and exit code 2.

    Goes under ``@hydra.main`` (Hydra would otherwise print a traceback). A
    :class:`PipelineError` is a problem with the input and says what to do;
    anything else (a corrupt file a reader did not anticipate, a bug) is
    named by its type and message, with the traceback in the run's log file
    (``HYDRA_FULL_ERROR=1`` raises it instead). Stages publish only on
    success, so either way the previous versions stay as they were.
    """
    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> None:
        _console_verbosity()
        try:
            check(cfg)
            fn(cfg)
        except PipelineError as e:
            _log_to_files(str(e), None)         # the console gets the one line below
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            logs = _log_to_files(f"{type(e).__name__}: {e}", sys.exc_info())
            where = f"the traceback is in {logs[0]}" if logs else "no log file"
            print(f"error: {Path(sys.argv[0]).stem}: unexpected {type(e).__name__}: {e} "
                  f"(nothing was published; {where}; HYDRA_FULL_ERROR=1 shows it here)",
                  file=sys.stderr)
            sys.exit(2)
    return wrapper


def run(main: Callable[[], None]) -> None:
    """Start a job (its ``@hydra.main`` function): the command line's overrides are composed
    once first, so a typo, a wrong type or an unknown option is one line and exit 2, as every
    other bad input is, rather than Hydra's multi-line report and exit 1."""
    sys.argv[1:] = renamed_keys(sys.argv[1:])
    problem = override_problem(sys.argv[1:])
    if problem:
        job_name = Path(sys.argv[0]).stem
        print(f"error: {job_name}: {problem} (python jobs/{job_name}.py --help lists every "
              "group and key)", file=sys.stderr)
        sys.exit(2)
    main()


def renamed_keys(args: list[str]) -> list[str]:
    """``args`` with every key that moved (``config.RENAMED``) under its new name; one notice
    on stderr per key."""
    out = []
    for arg in args:
        prefix = arg[:len(arg) - len(arg.lstrip("+~"))]
        key, sep, value = arg[len(prefix):].partition("=")
        if key in RENAMED:
            print(f"note: {key} is now {RENAMED[key]}; running with {RENAMED[key]}{sep}{value}",
                  file=sys.stderr)
            arg = f"{prefix}{RENAMED[key]}{sep}{value}"
        out.append(arg)
    return out


def override_problem(args: list[str]) -> str | None:
    """Why ``args`` do not compose with ``conf/config.yaml``, in one line; None when they do,
    and when Hydra's own flags (``--help``, ``-m``, ...) or a sweep leave it to Hydra."""
    if any(a.startswith("-") for a in args):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
    except OverrideParseException as e:
        return f"cannot parse the overrides {' '.join(args)}: {_one_line(e)}"
    if any(o.is_sweep_override() for o in parsed):
        return None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose("config", overrides=list(args))
    except Exception as e:                  # Hydra's and OmegaConf's composition errors
        return _one_line(e)
    return None


def _one_line(e: BaseException) -> str:
    """A multi-line composition error (and its cause) as one line, without the search path
    and the schema's bookkeeping."""
    parts = []
    for err in (e, e.__cause__):
        for line in str(err or "").split("\nConfig search path:")[0].splitlines():
            line = line.strip().rstrip(".")
            if line and not line.startswith(("full_key:", "reference_type=", "object_type=",
                                             "See https")):
                parts.append(line)
    return "; ".join(parts).replace(":;", ":")


def _console_verbosity() -> None:
    """``hydra.verbose`` brings the log lines the console leaves out (conf/config.yaml) back."""
    if not HydraConfig.initialized() or not HydraConfig.get().verbose:
        return
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.NOTSET)


def _log_to_files(msg: str, exc_info) -> list[str]:
    """Log an error (with its traceback, if ``exc_info``) to the root logger's files only,
    not the console."""
    logger = logging.getLogger("pipeline")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, msg, (), exc_info)
    files = [h for h in logging.getLogger().handlers
             if isinstance(h, logging.FileHandler) and h.baseFilename != os.devnull]
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]


# --- python jobs/<job>.py --help -------------------------------------------------------------

def help_text(cfg: DictConfig, *, job: str, doc: str | None = None,
              choices: Mapping[str, Any] | None = None) -> str:
    """The job's ``--help``: its docstring, the config groups and every key of the typed
    config (:class:`pipeline.config.Config`) with its default in the composed ``cfg`` and
    the one-line description of its field (``metadata["help"]``), the one source of both."""
    choices = dict(choices or {})
    script = f"python jobs/{job}.py"
    lines = [*(doc.strip("\n").splitlines() if doc else [job]), "",
             f"Usage: {script} [GROUP=OPTION ...] [KEY=VALUE ...] [--help]",
             "A default below is the one the config composes to, with any overrides given",
             f"before --help (e.g. {script} data=edges --help).", "",
             "== Config groups (GROUP=OPTION; conf/<group>/<option>.yaml) =="]
    groups = [f for f in dataclasses.fields(Config) if is_group(f)]
    rows = []
    for f in groups:
        options = sorted(p.stem for p in (CONF_DIR / f.name).glob("*.yaml"))
        chosen = choices.get(f.name)
        rows.append((f"{f.name}=" + "|".join(f"{o}*" if o == chosen else o for o in options),
                     f.metadata.get("help", "")))
    lines += _columns(rows)
    lines += ["  (* the option composed now)", "", "== Keys (KEY=VALUE) =="]
    sections = [(f"{f.name}{f' ({f.name}={choices[f.name]})' if f.name in choices else ''}: "
                 f"{f.metadata.get('help', '')}",
                 [(f"{f.name}.{k}={v}", h) for k, v, h in _keys(cfg[f.name], f.default_factory)])
                for f in groups]
    sections.append(("top level:", [(f"{k}={v}", h) for k, v, h in _keys(cfg, Config)
                                    if k not in {g.name for g in groups}]))
    pad = min(38, max(len(left) for _, rows in sections for left, _ in rows))
    for title, rows in sections:
        lines += [title, *_columns(rows, pad)]
    lines += ["", f"{script} --cfg job prints the whole composed config; --hydra-help lists "
              "Hydra's own flags."]
    return "\n".join(lines)


def _keys(node: DictConfig, schema: type) -> list[tuple[str, str, str]]:
    """(key, its value in ``node`` as an override would spell it, its help) per field."""
    raw = OmegaConf.to_container(node, resolve=False)
    out = []
    for f in dataclasses.fields(schema):
        if OmegaConf.is_missing(node, f.name):
            value = "??? (required)"
        else:
            try:
                got = node[f.name]
                value = _show(OmegaConf.to_container(got, resolve=True)
                              if OmegaConf.is_config(got) else got)
            except Exception:                     # an interpolation that does not resolve yet
                value = "?"
            if OmegaConf.is_interpolation(node, f.name):
                value = f"{value} (= {raw[f.name]})"
        out.append((f.name, value, f.metadata.get("help", "")))
    return out


def _show(value: Any, limit: int = 48) -> str:
    """A value the way a command-line override writes it; long containers cut short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_show(v, limit)}" for k, v in value.items()) + "}"
    else:
        return str(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(value)} entries)"


def _columns(rows: list[tuple[str, str]], pad: int | None = None) -> list[str]:
    """``  left  help`` lines, the help in a column ``pad`` characters in (default: after the
    widest left side); a wider left side puts its help on the next line."""
    pad = max((len(left) for left, _ in rows), default=0) if pad is None else pad
    out = []
    for left, text in rows:
        if len(left) > pad:
            out += [f"  {left}", f"  {'':{pad}}  {text}"]
        else:
            out.append(f"  {left:{pad}}  {text}")
    return out


def _help_template(*, _root_: DictConfig) -> str:
    """``hydra.help.template`` (conf/config.yaml): the help text for the running job, composed
    by Hydra with the command line's overrides (``$`` escaped for Hydra's string.Template)."""
    hydra = _root_.hydra
    main = sys.modules.get("__main__")
    text = help_text(_root_, job=str(hydra.job.name), doc=getattr(main, "__doc__", None),
                     choices=OmegaConf.to_container(hydra.runtime.choices))
    return text.replace("$", "$$")


if not OmegaConf.has_resolver("pipeline_help"):
    OmegaConf.register_new_resolver("pipeline_help", _help_template, use_cache=False)
