"""The T sweep: one run per end time T with the same budget, and the choice of T.

For each T the sweep trains (or reuses) ``OUT/T=<T>``, then measures on held-out data the PF-ODE NLL
(+ log nu at T), the ELBO and its three parts, the sample quality, and the sampling cost. ``auto``
picks the T with the best validation ELBO (ties to the cheaper T): a rule the paper does not give.
"""

from __future__ import annotations

import time
from pathlib import Path

from .checkpoint import check_output, check_path, write_json
from .config import Config
from .errors import UserError

DEFAULT_TS = (0.2, 0.3, 0.4, 0.6, 1.0)


def parse_Ts(text: str) -> list[float]:
    """'0.2,0.4,1' -> [0.2, 0.4, 1.0]; 'auto' -> the default candidates."""
    if text.strip() == "auto":
        return list(DEFAULT_TS)
    try:
        Ts = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--T '{text}': expected comma-separated numbers or 'auto'") from None
    if not Ts:
        raise UserError("--T: no end times given")
    for a, b in zip(Ts[:-1], Ts[1:]):
        if folder(a) == folder(b):
            raise UserError(f"--T {a!r} and {b!r} would share the run folder '{folder(a)}'; give end times that "
                            "differ in their first six digits")
    return Ts


def folder(T: float) -> str:
    """The name of the run folder of end time T."""
    return f"T={T:g}"


def sweep_T(base: Config, Ts: list[float], out: str | Path, n_eval: int = 1000, nll_steps: int = 100,
            progress: bool = True, overwrite: bool = False, inputs: list[str | Path] = ()) -> dict:
    """Train one model per T (resuming finished ones), evaluate each the same way, choose T.

    OUT/sweep.json and OUT/sweep.png are written only where nothing is, unless ``overwrite``, and never over
    one of ``inputs`` (a config file); one sweep at a time holds OUT."""
    from .run import RunDir
    out = check_path(Path(out) / "sweep.json", "--out").parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file, not a sweep folder")
    for name in ("sweep.json", "sweep.png") if out.is_dir() else ():
        check_output(out / name, "--out", overwrite=overwrite, inputs=inputs)
    configs = [base.replace(T=T, out=str(out / folder(T))) for T in Ts]
    for cfg in configs:
        cfg.validate()
        cfg.objective.check(sampler=cfg.log.sampler, fitted_prior=True, batch_size=cfg.optim.batch_size)  # the ELBO
    with RunDir(out).lock():
        return _sweep(base, Ts, configs, out, n_eval, nll_steps, progress)


def _sweep(base: Config, Ts: list[float], configs: list[Config], out: Path, n_eval: int, nll_steps: int,
           progress: bool) -> dict:
    from .methods.elbo import choose_T, elbo
    from .plots import plot_sweep
    from .run import open_run, split_data
    from .training.recipe import train
    rows = []
    for T, cfg in zip(Ts, configs):
        resume = (Path(cfg.log.out) / "config.json").exists()
        if resume:
            cfg = cfg.replace()
            cfg.given = frozenset({"out", "steps", "time_budget"})
        summary = train(cfg, resume=resume, progress=progress)
        run = open_run(cfg.log.out)
        val = split_data(run.config)[1]
        nll = run.nll(base.data.spec, n=n_eval, steps=nll_steps, progress=False)
        x = val.x[:n_eval].to(run.device)
        t0 = time.perf_counter()
        parts = {k: float(v.mean()) for k, v in elbo(run.model, run.sde, x, run.prior).items()}
        rows.append({"T": T, "run": cfg.log.out, "nll_nats": nll["nll_nats"], "bpd": nll.get("bpd"),
                     "elbo": parts["elbo"], "prior_term": parts["prior_term"], "score_term": parts["score_term"],
                     "theta_free": parts["theta_free"], "elbo_seconds": time.perf_counter() - t0,
                     "metric_name": summary["metric_name"], "metric": summary["metric"],
                     "sample_steps": summary["eval_steps"], "sample_seconds": summary["sample_seconds"],
                     "train_seconds": summary["train_seconds"],
                     "prior_fit_seconds": (summary.get("prior_fit") or {}).get("seconds", 0.0)})
    best = choose_T(Ts, {r["T"]: r["elbo"] for r in rows})
    result = {"data": base.data.spec, "prior": base.prior.name, "steps": base.budget.steps, "chosen_T": best,
              "rows": rows}
    write_json(out / "sweep.json", result)
    plot_sweep(rows, out / "sweep.png", title=f"{base.data.spec}, prior {base.prior.name}")
    return result


def format_table(result: dict) -> str:
    """The sweep as a Markdown table."""
    head = ("| T | NLL [nats] | ELBO | prior term | score term | theta-free | {m} | sample steps | train s "
            "| prior fit s |")
    lines = [head.format(m=result["rows"][0]["metric_name"]), "|" + "---|" * 10]
    for r in result["rows"]:
        mark = " *" if r["T"] == result["chosen_T"] else ""
        lines.append(f"| {r['T']:g}{mark} | {r['nll_nats']:.3f} | {r['elbo']:.3f} | {r['prior_term']:.3f} | "
                     f"{r['score_term']:.3f} | {r['theta_free']:.3f} | {r['metric']:.4f} | {r['sample_steps']} | "
                     f"{r['train_seconds']:.1f} | {r['prior_fit_seconds']:.1f} |")
    lines.append(f"\nchosen T (best validation ELBO): {result['chosen_T']:g}")
    return "\n".join(lines)
