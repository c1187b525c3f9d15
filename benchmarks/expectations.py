"""What the quality table should show, checked against it, with the search's own diagnostics.

Reads a quality.py result (default benchmarks/results/quality.json) and the run folders it
names, and reports per setting:
- every transform beats RTN; affine-only beats rotation-only at w4a4kv4;
- each adaptive method (search-soft/-hard, policy, policy-fitted) against the best single type,
  and at w3a3k2v2 clearly better than it (at least 5% lower perplexity);
- the fitted policy within 2% perplexity of search-soft, at under 1.1x affine-only calibration time;
- search-hard under 1.3x affine-only calibration time;
- diagnostics of each run: units per choice; for the searches, how often the argmax of the
  architecture weights (the paper's decision) agrees with the choice made (``decide: loss``
  keeps the lowest-loss combination); and the summed final block loss of each calibrated
  method (the quantity every method minimises block by block).
Prints markdown and writes it beside the input (``<name>-expectations.md``).

Run: .venv/bin/python benchmarks/expectations.py [benchmarks/results/quality.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lqsearch.storage import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
TRANSFORMS = ("rotation-hadamard", "rotation-learned", "affine", "search-soft", "search-hard", "policy", "policy-fitted")
SINGLE = ("rotation-hadamard", "rotation-learned", "affine")
ADAPTIVE = ("search-soft", "search-hard", "policy", "policy-fitted")
CLEARLY_BETTER = 0.95  # "clearly better" at w3a3k2v2: at most this fraction of the best single type's perplexity


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def run_folder(preset: str, setting: str, method: str) -> Path:
    return ROOT / "checkpoints" / "bench" / preset / setting / method


def search_diagnostics(choices: dict[str, Any]) -> tuple[int, int]:
    """(units whose argmax of pi is the choice made, units searched)."""
    if choices["selection"] != "search" or len(choices["candidates"]) < 2:
        return 0, 0
    units = [unit for block in choices["blocks"] for unit in block["units"].values()]
    return sum(unit["choice"] == max(unit["pi"], key=unit["pi"].get) for unit in units), len(units)


def report(document: dict[str, Any]) -> str:
    preset = document["preset"]["name"]
    rows = {(r["setting"], r["method"]): r for r in document["rows"] if r.get("weight_rounding", "rtn") == "rtn"}
    lines = [f"Expectations against `{preset}` (commit `{document['commit']}`, {document['date']}).", ""]
    for setting in dict.fromkeys(s for s, _ in rows):
        ppl = {m: rows[(setting, m)]["ppl"] for s, m in rows if s == setting}
        seconds = {m: rows[(setting, m)]["calib_seconds"] for s, m in rows if s == setting}
        lines += [f"### {setting}", "", "| expectation | measured | holds |", "|---|---|---|"]
        if "rtn" in ppl:
            for method in (m for m in TRANSFORMS if m in ppl):
                lines.append(f"| {method} beats RTN | {ppl[method]:.4g} vs {ppl['rtn']:.4g} | {verdict(ppl[method] < ppl['rtn'])} |")
        singles = {m: ppl[m] for m in SINGLE if m in ppl}
        if setting == "w4a4kv4" and "affine" in singles and len(singles) > 1:
            best_rotation = min(v for m, v in singles.items() if m != "affine")
            lines.append(f"| affine beats rotation-only | {singles['affine']:.4g} vs {best_rotation:.4g} | {verdict(singles['affine'] < best_rotation)} |")
        if singles:
            best = min(singles, key=singles.get)
            for method in (m for m in ADAPTIVE if m in ppl):
                lines.append(f"| {method} at least as good as the best single type ({best}) | {ppl[method]:.4g} vs {singles[best]:.4g} | {verdict(ppl[method] <= singles[best])} |")
            if setting == "w3a3k2v2":
                for method in (m for m in ADAPTIVE if m in ppl):
                    ratio = ppl[method] / singles[best]
                    lines.append(f"| {method} clearly better than {best} (ppl at most {CLEARLY_BETTER}x) | {ratio:.3f}x | {verdict(ratio <= CLEARLY_BETTER)} |")
        if {"policy-fitted", "search-soft", "affine"} <= ppl.keys():
            gap = ppl["policy-fitted"] / ppl["search-soft"] - 1
            cost = seconds["policy-fitted"] / seconds["affine"]
            lines.append(f"| policy-fitted within 2% of search-soft | {gap:+.1%} | {verdict(gap <= 0.02)} |")
            lines.append(f"| policy-fitted under 1.1x affine calibration time | {cost:.2f}x | {verdict(cost < 1.1)} |")
        if {"search-hard", "affine"} <= seconds.keys():
            cost = seconds["search-hard"] / seconds["affine"]
            lines.append(f"| search-hard under 1.3x affine calibration time | {cost:.2f}x | {verdict(cost < 1.3)} |")
        lines += ["", "| method | units affine/rotation | argmax of pi = choice | summed final block loss |", "|---|---|---|---|"]
        for method in (m for m in TRANSFORMS if m in ppl):
            choices = json.loads((run_folder(preset, setting, method) / "choices.json").read_text())
            agree, total = search_diagnostics(choices)
            loss = sum(block["final_loss"] for block in choices["blocks"])
            row = rows[(setting, method)]["choices"]
            lines.append(f"| {method} | {row['affine']}/{row['rotation']} | {f'{agree}/{total}' if total else ''} | {loss:.4g} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "quality.json"
    text = report(json.loads(source.read_text()))
    write_text_atomic(source.with_name(f"{source.stem}-expectations.md"), text)
    print(text)


if __name__ == "__main__":
    main()
