r"""The label-free template policies (``eval.template_policy``) against every template's MRE
(issue 34): which policy chooses a template that transfers its landmarks well?

python -m tools.results.template_choice --out=NAME RUN=TRUTH ...

For each run's baseline encoder (its training split, grid protocol), each policy of
``templates.POLICIES`` scores every labelled image as a candidate (``eval.template_candidates=0``)
with the pipeline's own code (``templates.choose``), and again the 32 evenly spaced candidates
that the default ``eval.template_candidates`` scores. Each choice is looked up in ``TRUTH``
(``tools.results.several_templates``'s file for the run, without .json: ``single_mre_mm``, every
image's MRE as the template into the others): its MRE, its rank among the N templates (1: the
best), whether it is in the best tenth, and the Spearman correlation between the policy's score
and the templates' MRE over all N (positive: the policy prefers the better templates). The
seconds each policy took are kept (one process, the 2-core CPU unless said otherwise). An
existing file is updated: the runs and policies measured again replace theirs, the command is
added to its ``commands``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from piaug import templates
from tools.results import RESULTS, command
from tools.results.template_spread import encoded


def judge(scores: np.ndarray, mre: np.ndarray, ids: list[str]) -> dict:
    """A policy's scores (-inf: not a candidate) against the templates' MREs."""
    rank = np.empty(len(mre), int)
    rank[np.argsort(mre, kind="stable")] = np.arange(1, len(mre) + 1)
    t = int(np.argmax(scores))
    scored = np.isfinite(scores)
    out = {
        "id": ids[t],
        "mre_mm": float(mre[t]),
        "rank": int(rank[t]),
        "of": len(mre),
        "best_tenth": bool(rank[t] <= np.ceil(0.1 * len(mre))),
    }
    if scored.sum() > 2:
        out["spearman_with_mre"] = float(-stats.spearmanr(scores[scored], mre[scored]).statistic)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN=TRUTH")
    parser.add_argument("--out", required=True, help="the result file's name, without .json")
    parser.add_argument("--policies", default=",".join(templates.POLICIES))
    args = parser.parse_args()
    path = RESULTS / f"{args.out}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"commands": []}
    payload["commands"].append(command("tools.results.template_choice", sys.argv[1:]))
    for spec in args.runs:
        run, _, truth_name = spec.partition("=")
        truth = json.loads((RESULTS / f"{truth_name}.json").read_text())[run]["single_mre_mm"]
        config, pool, features = encoded(Path(run), "baseline")
        mre = np.array([truth[i] for i in pool.ids])
        entry: dict = payload.get(run, {})
        for name in args.policies.split(","):
            result: dict = {}
            for label, count in (("all", 0), ("spaced_32", 32)):
                policy = templates.TemplatePolicy.from_eval(
                    dict(config.eval, template_policy=name, template_candidates=count)
                )
                start = time.perf_counter()
                _, scores, _ = templates.choose_in_pool(config, pool, features, policy=policy)
                seconds = time.perf_counter() - start
                result[label] = judge(scores, mre, pool.ids) | {"seconds": round(seconds, 1)}
                if label == "all":
                    result["scores"] = [round(float(s), 6) for s in scores]
                print(run, name, label, json.dumps(result[label]), flush=True)
            entry[name] = result
        entry["ids"] = list(pool.ids)
        payload[run] = entry
        path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
