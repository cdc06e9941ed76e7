"""A bake's report as one self-contained HTML page (no scripts, no assets): KL per epoch (train
and held-out) as an inline SVG chart, held-out KL by context source before / after, the recall
probes' answers before / after (when the bake was checked, `add_recall`), timings per phase.
`bake` writes it as `report.html` beside `bake.json`; the runtime's status page reuses `kl_chart`."""
from __future__ import annotations

import html
import json
from pathlib import Path

REPORT_FILE = "report.html"


def kl_chart(epochs: list[dict], before: float | None = None, width: int = 360, height: int = 160) -> str:
    """An inline SVG line chart of `train_loss` and `heldout_kl` per epoch (`before`: epoch 0)."""
    series = {"held-out KL": [e.get("heldout_kl") for e in epochs], "train KL": [e.get("train_loss") for e in epochs]}
    if before is not None:
        series["held-out KL"] = [before, *series["held-out KL"]]
        series["train KL"] = [None, *series["train KL"]]
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values:
        return '<svg class="kl" width="0" height="0"></svg>'
    top, n = max(values) * 1.1 or 1.0, max(len(vs) for vs in series.values())
    pad = 30
    x = lambda i: pad + (width - 2 * pad) * i / max(1, n - 1)  # noqa: E731
    y = lambda v: height - pad - (height - 2 * pad) * v / top  # noqa: E731
    parts = [f'<svg class="kl" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="KL per epoch">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
             f'<text x="2" y="{pad}" font-size="10">{top:.2f}</text>',
             f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">epoch {n - 1 if before is not None else n}</text>']
    for (label, vs), colour, row in zip(series.items(), ("#c0392b", "#2471a3"), (0, 1)):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs) if v is not None)
        parts.append(f'<polyline class="{label.split()[0]}" fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{width - pad}" y="{pad + 12 * row}" font-size="10" fill="{colour}" '
                     f'text-anchor="end">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_report(metrics: dict) -> str:
    m = metrics
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['before']:.4f}</td><td>{(v['after'] or 0):.4f}</td></tr>"
                   for k, v in m.get("eval_kl_by_source", {}).items())
    timings = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>"
                      for k, v in m.get("timings", {}).items() if isinstance(v, (int, float)))
    cfg = html.escape(json.dumps(m.get("config", {}), indent=1))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bake report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td,th{{padding:2px 10px;text-align:left}}
pre{{background:#f4f4f4;padding:1em;font-size:11px}}.hit{{color:#1e8449}}.miss{{color:#922b21}}
table.recall td{{font-size:12px;vertical-align:top}}</style></head><body>
<h1>Bake report</h1>
<p>{m.get('created_at', '')} &middot; prompt {m.get('prompt_tokens', '?')} tokens &middot;
held-out KL <b>{m.get('eval_kl_before', 0):.4f} &rarr; {m.get('eval_kl_after', 0):.4f}</b> nats/token &middot;
drift {m.get('drift_kl', 0):.4f} &middot; {m.get('trajectories', {}).get('train', '?')} training trajectories</p>
<h2>KL per epoch</h2>{kl_chart(m.get('epochs', []), m.get('eval_kl_before'))}
<h2>Held-out KL by context source, before / after</h2>
<p>probe: the prompt's recall probes (its names and numbers asked for); self: questions the model wrote
about each line; generic: everyday requests (drift); anchor: unrelated questions whose target is the model
without the prompt.</p><table><tr><th>source</th><th>before</th><th>after</th></tr>{rows}</table>
{recall_section(m['recall']) if m.get('recall') else ''}
<h2>Timings</h2><table>{timings}</table>
<h2>Config</h2><pre>{cfg}</pre></body></html>"""


def write_report(out_dir: str | Path, metrics: dict) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.write_text(render_report(metrics))
    return path


def recall_section(recall: dict) -> str:
    """Recall probes before / after (a `VerifyReport.to_dict()`): per probe, the base model's answer,
    the prompted model's and the baked model's, each marked right or wrong; and the general set."""
    rows, totals = [], {"base": 0, "prompted": 0, "baked": 0, "n": 0}
    mark = lambda ok: "&#10003;" if ok else "&#10007;"  # noqa: E731
    columns = (("base", "base_hit"), ("prompted", "prompted_hit"), ("baked", "hit"))  # answer, its mark
    for item in recall.get("items", []):
        for a in item.get("answers", []):
            totals["n"] += 1
            for k, hit in columns:
                totals[k] += bool(a.get(hit))
            cells = "".join(f'<td class="{"hit" if a.get(hit) else "miss"}">{mark(a.get(hit))} '
                            f'{html.escape(str(a.get(k, ""))[:120])}</td>' for k, hit in columns)
            rows.append(f"<tr><td>{html.escape(a['question'])}</td><td>{html.escape(', '.join(a['expected']))}</td>"
                        f"{cells}</tr>")
    g = recall.get("general") or {}
    general = (f"<p>General questions the base answers right: {g['kept']} of {g['base_right']} still right "
               f"after the bake.</p>" if g.get("base_right") else "")
    n = totals["n"]
    return (f"<h2>Recall probes, before / after</h2><p>Questions held out of training, asked without the "
            f"prompt (base: before the bake; baked: after) and with it (prompted). Right: base "
            f"<b>{totals['base']}/{n}</b>, prompted <b>{totals['prompted']}/{n}</b>, baked "
            f"<b class=\"baked\">{totals['baked']}/{n}</b>.</p>{general}"
            f'<table class="recall"><tr><th>probe</th><th>expected</th><th>base</th><th>prompted</th>'
            f"<th>baked</th></tr>{''.join(rows)}</table>")


def add_recall(out_dir: str | Path, recall: dict) -> Path:
    """Store a bake's recall check in its bake.json and re-render its report (both atomically)."""
    out_dir = Path(out_dir)
    metrics = json.loads((out_dir / "bake.json").read_text())
    metrics["recall"] = recall
    for name, text in (("bake.json", json.dumps(metrics, indent=2)), (REPORT_FILE, render_report(metrics))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
    return out_dir / REPORT_FILE
