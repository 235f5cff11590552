"""The paper's claims (docs/method.md), each tested on the runs of a comparison (benchmarks/compare_losses.py's
results.json, one row per loss and seed, for each teacher of its ``by_teacher``): a paired bootstrap over seeds for each comparison, a bootstrap over
runs for each correlation. A verdict is "holds", "does not hold" or "not resolved" (the 95 % interval contains 0).

    .venv/bin/python benchmarks/claims.py docs/results/results.json --out docs/results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from relational_distill.errors import run_script
from relational_distill.io import atomic_write_json, atomic_write_text
from relational_distill.metrics.paired import VERDICTS, paired_bootstrap
from relational_distill.report import markdown_table


def _by_seed(runs: list[dict], variant: str, key) -> dict[int, float]:
    return {r["seed"]: (key(r) if callable(key) else r[key]) for r in runs if r["variant"] == variant}


def compare(runs: list[dict], a: str, key_a, b: str, key_b) -> dict:
    """A's value greater than B's, seed for seed."""
    va, vb = _by_seed(runs, a, key_a), _by_seed(runs, b, key_b)
    seeds = sorted(set(va) & set(vb))
    res = paired_bootstrap([va[s] for s in seeds], [vb[s] for s in seeds])
    return {"verdict": res.verdict, "mean_difference": res.mean, "interval_95": [res.low, res.high], "seeds": seeds}


def both(*parts: dict) -> dict:
    """A claim made of several comparisons: it holds when all hold, does not when any does not."""
    verdicts = [p["verdict"] for p in parts]
    verdict = VERDICTS[0] if all(v == VERDICTS[0] for v in verdicts) else \
        VERDICTS[1] if any(v == VERDICTS[1] for v in verdicts) else VERDICTS[2]
    return {"verdict": verdict, "parts": list(parts)}


def correlation(runs: list[dict], gap, metric: str, resamples: int = 10_000, seed: int = 0) -> dict:
    """Pearson r between a structural gap and an mIoU over the trained runs, with a bootstrap interval over runs;
    the claim (a negative correlation) holds when the interval is below 0."""
    trained = [r for r in runs if r["variant"] != "random-init"]
    x, y = np.array([gap(r) for r in trained]), np.array([r[metric] for r in trained])
    draws = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    rs = [np.corrcoef(x[d], y[d])[0, 1] for d in draws if x[d].std() > 0 and y[d].std() > 0]
    low, high = np.quantile(rs, [0.025, 0.975])
    r = float(np.corrcoef(x, y)[0, 1])
    verdict = VERDICTS[0] if high < 0 else VERDICTS[1] if low > 0 else VERDICTS[2]
    return {"verdict": verdict, "pearson": r, "interval_95": [float(low), float(high)], "runs": len(x)}


def claims(runs: list[dict]) -> list[dict]:
    zs, id1, ood1 = "zero_shot", "finetune_1pct_id", "finetune_1pct_ood"
    du, dt = (lambda r: abs(r["dU"])), (lambda r: abs(r["dT"]))
    neg = lambda f: (lambda r: -f(r))  # noqa: E731  (a smaller gap is "greater" for compare)
    rows = [
        ("relational beats contrastive zero-shot", compare(runs, "relational", zs, "contrastive", zs)),
        ("similarity beats contrastive zero-shot", compare(runs, "similarity", zs, "contrastive", zs)),
        ("similarity is less discriminative than contrastive (worse 1 % few-shot in distribution)",
         compare(runs, "contrastive", id1, "similarity", id1)),
        ("relational beats similarity few-shot in distribution (1 %)", compare(runs, "relational", id1, "similarity", id1)),
        ("relational beats similarity few-shot out of distribution (1 %)",
         compare(runs, "relational", ood1, "similarity", ood1)),
        ("relational has the U closest to the teacher's (smallest |dU|)",
         both(compare(runs, "relational", neg(du), "contrastive", neg(du)),
              compare(runs, "relational", neg(du), "similarity", neg(du)))),
        ("relational has the T closest to the teacher's (smallest |dT|)",
         both(compare(runs, "relational", neg(dt), "contrastive", neg(dt)),
              compare(runs, "relational", neg(dt), "similarity", neg(dt)))),
        ("relational has the smallest modality gap G",
         both(compare(runs, "relational", neg(lambda r: r["G"]), "contrastive", neg(lambda r: r["G"])),
              compare(runs, "relational", neg(lambda r: r["G"]), "similarity", neg(lambda r: r["G"])))),
        ("contrastive has a higher U and a lower T than the teacher",
         both(compare(runs, "contrastive", "U_3d", "contrastive", "U_2d"),
              compare(runs, "contrastive", "T_2d", "contrastive", "T_3d"))),
        ("similarity has a lower U and a higher T than the teacher",
         both(compare(runs, "similarity", "U_2d", "similarity", "U_3d"),
              compare(runs, "similarity", "T_3d", "similarity", "T_2d"))),
    ]
    for name, gap in (("G", lambda r: r["G"]), ("|dU|", du), ("|dT|", dt)):
        for metric, label in ((zs, "zero-shot"), (id1, "1 % few-shot in distribution")):
            rows.append((f"the structural gap {name} correlates negatively with {label} mIoU",
                         correlation(runs, gap, metric)))
    return [{"claim": name, **result} for name, result in rows]


def numbers(c: dict) -> str:
    """The numbers behind a verdict, in points of mIoU (x100) where they are mIoUs."""
    if "pearson" in c:
        lo, hi = c["interval_95"]
        return f"r = {c['pearson']:+.2f} [{lo:+.2f}, {hi:+.2f}] over {c['runs']} runs"
    parts = c.get("parts", [c])
    return "; ".join(f"diff {p['mean_difference']:+.4f} [{p['interval_95'][0]:+.4f}, {p['interval_95'][1]:+.4f}]"
                     for p in parts) + f" ({len(parts[0]['seeds'])} seeds)"


def claims_markdown(spec: str, table: list[dict], summary: dict, protocol: str | None = None) -> str:
    """The claims table of one teacher; ``protocol`` overrides the comparison's own (a teacher's run kept from an
    earlier comparison says how it was made)."""
    protocol = protocol or f"{summary['seeds']} seeds, each its own town, {summary['date']}"
    return (f"**Synthetic** claims under `{spec}` ({protocol}); "
            "differences are A − B with a paired bootstrap 95 % interval over seeds (mIoU as fractions, structure in "
            "its units):\n\n"
            + markdown_table(["claim", "verdict", "numbers"],
                             [[c["claim"].replace("|", "\\|"), c["verdict"], numbers(c)] for c in table]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results.json of benchmarks/compare_losses.py")
    parser.add_argument("--out", type=Path, help="write claims.json and claims.md here")
    args = parser.parse_args()
    summary = json.loads(args.results.read_text())
    tables = {spec: claims(s["runs"]) for spec, s in summary["by_teacher"].items()}
    md = "\n".join(claims_markdown(spec, table, summary, summary["by_teacher"][spec].get("protocol"))
                    for spec, table in tables.items())
    print(md)
    if args.out:
        atomic_write_json(args.out / "claims.json", {"claims": tables, "source": str(args.results)})
        atomic_write_text(args.out / "claims.md", md)


if __name__ == "__main__":
    run_script(main)
