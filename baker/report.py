"""A bake's report as one self-contained HTML page (no scripts, no assets): KL per epoch (train
and held-out) as an inline SVG chart, held-out KL by context source before / after, timings per
phase. `bake` writes it as `report.html` beside `bake.json`; the runtime's status page reuses
`kl_chart`."""
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
pre{{background:#f4f4f4;padding:1em;font-size:11px}}</style></head><body>
<h1>Bake report</h1>
<p>{m.get('created_at', '')} &middot; prompt {m.get('prompt_tokens', '?')} tokens &middot;
held-out KL <b>{m.get('eval_kl_before', 0):.4f} &rarr; {m.get('eval_kl_after', 0):.4f}</b> nats/token &middot;
drift {m.get('drift_kl', 0):.4f} &middot; {m.get('trajectories', {}).get('train', '?')} training trajectories</p>
<h2>KL per epoch</h2>{kl_chart(m.get('epochs', []), m.get('eval_kl_before'))}
<h2>Held-out KL by context source, before / after</h2>
<p>probe: the prompt's recall probes (its names and numbers asked for); self: questions the model wrote
about each line; generic: everyday requests (drift).</p><table><tr><th>source</th><th>before</th><th>after</th></tr>{rows}</table>
<h2>Timings</h2><table>{timings}</table>
<h2>Config</h2><pre>{cfg}</pre></body></html>"""


def write_report(out_dir: str | Path, metrics: dict) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.write_text(render_report(metrics))
    return path
