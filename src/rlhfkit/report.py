"""`rlhfkit report RUN`: one self-contained RUN/report.html telling the run's story, plots inside.

    rlhfkit report runs/demo                 # -> runs/demo/report.html
    rlhfkit report runs/demo --out /tmp/demo.html

It reads what the stages wrote and nothing else: each stage directory under RUN (and one level
below, e.g. RUN/eval/jokes_ood) is recognised by the first line of its config.toml
("# rlhfkit pretrain", ...; a feedback store by feedback.db, the world by its README), then its
metrics.jsonl and the files its stage documents (reward: eval.json, eval-*/eval.json; RL:
samples.jsonl, guard.json; eval: eval.json, samples.jsonl). The page: the pipeline as a row of
stages with their key figures; pre-training and SFT losses; the feedback and the reward model
(accuracy, calibration); the RLHF curves with the guard's stop and the shipped step marked, gold
against KL, and responses to the same prompts before and after; arithmetic accuracy over the
verifiable RL steps; DPO; win rates and diversity per evaluation; arena ratings. A part whose
inputs are missing says "not run" in one line. Images are PNG data URIs, there is no script and
no external URL, so the file opens offline and can be mailed; all text from files is escaped.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import time
from pathlib import Path

from rlhfkit import report_plots as plots
from rlhfkit.files import UserError, atomic_write_text
from rlhfkit.report_data import (PIPELINE, RL_KINDS, Stage, discover, feedback_stats, first, fmt, last, read_json,
                                 read_rows, rl_extras, short, verifiable)

TITLES = {"world": "world", "tokenizer": "tokenizer", "pretrain": "pre-training", "sft": "SFT",
          "feedback": "rankings", "reward": "reward model", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO",
          "dpo": "DPO", "eval": "evaluation"}

# ------------------------------------------------------------------------------ the pipeline row

def _figs_world(st, run):
    readme = (st.path / "README.md").read_text(errors="replace") if (st.path / "README.md").is_file() else ""
    rows = [ln.split("|") for ln in readme.splitlines() if ln.startswith("| `")]
    # "| `corpus.txt` | 7781 documents | 2,503,484 bytes |" -> ("corpus.txt", "7781 docs")
    # only rows that count something (tokenizer.txt's row describes its text instead)
    return [(r[1].strip(" `").rsplit(".", 1)[0], " ".join(r[2].split()[:2]).replace("documents", "docs")
             .replace("conversations", "conv.")) for r in rows
            if len(r) > 3 and r[2].strip()[:1].isdigit()
            and not r[1].strip(" `").rsplit(".", 1)[0].endswith(("_eval", "_ood"))][:4]


def _figs_tokenizer(st, run):
    return [("vocab", fmt(st.config.get("vocab_size")))]


def _figs_lm(st, run):
    out = []
    cfg = read_json(st.path / "config.json", st.notes) or {}
    if cfg.get("hidden_size"):
        out.append(("shape", f"d{cfg['hidden_size']} × {cfg.get('num_hidden_layers', '?')} layers"))
    steps, _ = plots.series(st.rows, "train/loss")
    out += [("steps", fmt(steps[-1] if steps else None)), ("train loss", fmt(last(st.rows, "train/loss"))),
            ("held-out loss", fmt(last(st.rows, "eval/loss")))]
    return out


def _figs_feedback(st, run):
    s = feedback_stats(st)
    if not s:
        return [("store", "no feedback.db")]
    c, ag = s["counts"], s["agreement"]
    return [("prompts", fmt(c["prompts"])), ("rankings", fmt(c["rankings"])),
            ("agreement", fmt(ag["pairwise_agreement"]) if ag["tasks"] else "no overlap")]


def _figs_reward(st, run):
    ens = read_json(st.path / "ensemble.json", [])
    members = [("members", fmt(len(ens.get("members", []))))] if isinstance(ens, dict) else []
    return members + [("held-out acc.", fmt(last(st.rows, "rm/accuracy"))),
                      ("top-1 acc.", fmt(last(st.rows, "rm/top1_accuracy"))),
                      ("ECE", fmt(last(st.rows, "rm/ece"))), ("pairs", fmt(last(st.rows, "rm/pairs")))]


def _figs_rl(st, run):
    steps, _ = plots.series(st.rows, "rollout/reward_mean")
    out = [("steps", fmt(steps[-1] if steps else None))]
    if verifiable(st):
        out.append(("accuracy", f"{fmt(first(st.rows, 'eval/accuracy'))} → {fmt(last(st.rows, 'eval/accuracy'))}"))
    else:
        out.append(("proxy", f"{fmt(first(st.rows, 'eval/reward_mean'))} → {fmt(last(st.rows, 'eval/reward_mean'))}"))
        if first(st.rows, "eval/gold_mean") is not None:
            out.append(("gold", f"{fmt(first(st.rows, 'eval/gold_mean'))} → {fmt(last(st.rows, 'eval/gold_mean'))}"))
        g = rl_extras(st)["guard"]
        if g:
            at = {r["step"]: r["eval/gold_mean"] for r in st.rows if plots.number(r.get("eval/gold_mean"))}
            if g.get("shipped_step") in at:
                out.append(("shipped gold", fmt(at[g["shipped_step"]])))
            out.append(("guard", f"ship {fmt(g.get('shipped_step'))}, stop {fmt(g.get('stop_step'))}"))
    out.append(("KL", fmt(last(st.rows, "policy/kl_ref"))))
    return out


def _figs_dpo(st, run):
    steps, _ = plots.series(st.rows, "dpo/loss")
    return [("steps", fmt(steps[-1] if steps else None)),
            ("held-out acc.", fmt(last(st.rows, "eval/reward_accuracy"))), ("loss", fmt(last(st.rows, "dpo/loss")))]


def _figs_eval(st, run):
    ev = read_json(st.path / "eval.json", [])  # the section notes what is wrong with it
    ev = ev if isinstance(ev, dict) else {}
    base = st.config.get("baseline") or next(iter(ev), "")
    rest = {m: v for m, v in ev.items() if m != base and isinstance(v, dict) and plots.number(v.get("win_rate"))}
    out = [("models", fmt(len(ev))), ("baseline", short(base, run) if base else "–")]
    if rest:
        m, v = max(rest.items(), key=lambda kv: kv[1]["win_rate"])
        out.append((f"best win rate ({short(m, run)})", fmt(v["win_rate"])))
    return out


KEY_FIGURES = {"world": _figs_world, "tokenizer": _figs_tokenizer, "pretrain": _figs_lm, "sft": _figs_lm,
               "feedback": _figs_feedback, "reward": _figs_reward, "ppo": _figs_rl, "grpo": _figs_rl,
               "rloo": _figs_rl, "dpo": _figs_dpo, "eval": _figs_eval}


def pipeline(stages: list[Stage], run: Path) -> str:
    found = {s.kind for s in stages}
    cards = []
    for kind in PIPELINE + sorted(found - set(PIPELINE)):
        mine = [s for s in stages if s.kind == kind]
        if not mine:
            if kind in ("rloo",):  # an alternative to PPO/GRPO, not a missing stage
                continue
            cards.append(f'<div class="card missing"><h3>{esc(TITLES.get(kind, kind))}</h3><p>not run</p></div>')
            continue
        for s in mine:
            figs = KEY_FIGURES.get(kind, lambda st, r: [])(s, run)
            dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in figs)
            cards.append(f'<div class="card"><h3>{esc(TITLES.get(kind, kind))}</h3>'
                         f'<p class="dir">{esc(s.name)}/</p><dl>{dl}</dl></div>')
    return '<div class="pipeline">' + '<span class="arrow">→</span>'.join(cards) + "</div>"


# ------------------------------------------------------------------------------ HTML pieces

def esc(x) -> str:
    return html.escape(str(x), quote=True)


class Figures:
    """Counts the figures and turns PNG bytes into <img> data URIs."""

    def __init__(self):
        self.n = 0

    def img(self, png: bytes | None, alt: str) -> str:
        if not png:
            return ""
        self.n += 1
        data = base64.b64encode(png).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}"></figure>'


def not_run(what: str, hint: str) -> str:
    return f'<p class="notrun">not run: {esc(what)} ({esc(hint)})</p>'


def notes(st: Stage) -> str:
    return "".join(f'<p class="note">{esc(st.name)}: {esc(n)}</p>' for n in st.notes)


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escape before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    # a wide table scrolls inside its box instead of widening the page (phones)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def response_cell(s: dict | None) -> str:
    if s is None:
        return '<span class="muted">–</span>'
    text = s.get("response", "")
    body = f'<div class="text">{esc(text)}</div>' if str(text).strip() else '<div class="text muted">(empty)</div>'
    scores = [f"{k} {fmt(s[k])}" for k in ("reward", "gold", "score") if plots.number(s.get(k))]
    return body + (f'<div class="scores">{esc(" · ".join(scores))}</div>' if scores else "")


def before_after(x: dict, limit: int = 8) -> str:
    if not x["samples"]:
        return not_run("responses before and after", "no samples.jsonl")
    a, b = x["before"], x["after"]
    pre = [s for s in x["samples"] if s.get("step") == a]
    post = [s for s in x["samples"] if s.get("step") == b]
    rows = []
    for s in pre[:limit]:
        match = next((t for t in post if t.get("prompt") == s.get("prompt")), None)
        if match is not None:
            post.remove(match)  # the same prompt twice pairs in order
        rows.append([f'<div class="text">{esc(s.get("prompt", ""))}</div>', response_cell(s), response_cell(match)])
    after = f"after (step {fmt(b)}{', shipped' if x['guard'] and x['guard'].get('shipped_step') == b else ''})"
    return table(["prompt", f"before (step {fmt(a)})", esc(after)], rows, "samples")


def guard_table(g: dict) -> str:
    keys = ["mode", "shipped_step", "stop_step", "reason", "labels_used", "labels_total", "criterion"]
    rows = [[esc(k), esc(fmt(g[k]) if not isinstance(g[k], (dict, list)) else json.dumps(g[k]))]
            for k in keys if k in g]
    return table(["guard.json", "value"], rows, "kv")


# ------------------------------------------------------------------------------ the sections

def sec_lm(stages: list[Stage], F: Figures) -> str:
    out = []
    for kind, what, hint in (("pretrain", "pre-training", "rlhfkit pretrain"), ("sft", "SFT", "rlhfkit sft")):
        mine = [s for s in stages if s.kind == kind]
        if not mine:
            out.append(not_run(what, f"no {hint} output in RUN"))
        for s in mine:
            img = F.img(plots.loss_curves(s.rows, f"{what} loss ({s.name})"), f"{what} loss curves")
            out.append(notes(s) + (img or not_run(f"{what} loss curve", f"{s.name}/metrics.jsonl has no loss")))
    return '<div class="grid2">' + "".join(f"<div>{o}</div>" for o in out) + "</div>"


def sec_feedback(stages: list[Stage], run: Path) -> str:
    mine = [s for s in stages if s.kind == "feedback"]
    if not mine:
        return not_run("rankings", "no feedback store in RUN (rlhfkit feedback fill / simulate)")
    out = []
    for s in mine:
        st = feedback_stats(s)
        if not st:
            out.append(notes(s) + not_run(f"rankings in {s.name}", "no feedback.db"))
            continue
        c, ag = st["counts"], st["agreement"]
        rows = [["prompts", fmt(c["prompts"])], ["responses", fmt(c["responses"])], ["tasks", fmt(c["tasks"])],
                ["rankings", esc(f"{c['rankings']} (" + ", ".join(f"{k} {v}" for k, v in
                                                               sorted(c["rankings_by_source"].items())) + ")")],
                ["annotators", fmt(c["annotators"])], ["all-bad flags", fmt(c["all_bad"])],
                ["pairwise agreement (overlapping tasks)",
                 fmt(ag["pairwise_agreement"]) + f" over {ag['tasks']} tasks" if ag["tasks"] else "no overlapping tasks"],
                ["Kendall's tau", fmt(ag["kendall_tau"])]]
        out.append(f"<h3>{esc(s.name)}/feedback.db</h3>" + notes(s) + table(["", "value"], rows, "kv"))
    return "".join(out)


def sec_reward(stages: list[Stage], F: Figures, run: Path) -> str:
    mine = [s for s in stages if s.kind == "reward"]
    if not mine:
        return not_run("reward model", "no rlhfkit reward output in RUN")
    out = []
    for s in mine:
        ev = read_json(s.path / "eval.json", s.notes) or {}
        img = F.img(plots.reward_model(s.rows, ev.get("calibration_bins") or [], f"reward model ({s.name})"),
                    "reward model accuracy and calibration")
        evals = [("held-out split", ev)] + [
            (d.name, read_json(d / "eval.json", s.notes) or {}) for d in sorted(s.path.glob("eval-*")) if d.is_dir()]
        keys = ["rm/accuracy", "rm/top1_accuracy", "rm/ece", "rm/margin_mean", "rm/pairs", "rm/rankings",
                "rm/ensemble_std_mean"]
        rows = [[esc(name)] + [esc(fmt((e.get("metrics") or {}).get(k))) for k in keys] for name, e in evals
                if e.get("metrics")]
        ens = read_json(s.path / "ensemble.json", s.notes)
        members = f"<p>ensemble of {len(ens.get('members', []))} members ({esc(ens.get('loss', ''))})</p>" \
            if isinstance(ens, dict) else ""
        out.append(f"<h3>{esc(s.name)}</h3>" + notes(s) + members
                   + (img or not_run("reward-model plots", "no accuracy or calibration logged"))
                   + (table(["evaluated on"] + [esc(k) for k in keys], rows) if rows else
                      not_run("held-out evaluation", f"no {s.name}/eval.json")))
    return "".join(out)


def sec_rl(stages: list[Stage], F: Figures, want_verifiable: bool) -> str:
    mine = [s for s in stages if s.kind in RL_KINDS and verifiable(s) == want_verifiable]
    if not mine:
        return not_run("verifiable RL" if want_verifiable else "RLHF",
                       "no rlhfkit grpo/rloo run with reward = \"math\"" if want_verifiable else
                       "no rlhfkit ppo/grpo/rloo run with a learned reward")
    out = []
    for s in mine:
        x = rl_extras(s)
        reward = esc(s.config.get("reward", "?"))
        body = [f'<h3>{esc(TITLES[s.kind])}: {esc(s.name)} <span class="muted">reward {reward}</span></h3>', notes(s)]
        curves = F.img(plots.rl_curves(s.rows, x["marks"], f"{TITLES[s.kind]} ({s.name})", want_verifiable), "RL curves")
        body.append(curves or not_run("RL curves", f"{s.name}/metrics.jsonl has no RL metrics"))
        pair = []
        if want_verifiable:
            pair.append(F.img(plots.accuracy(s.rows, f"held-out accuracy over {TITLES[s.kind]} steps"),
                              "accuracy over RL steps") or not_run("accuracy", "no eval/accuracy logged"))
        else:
            shipped = x["guard"].get("shipped_step") if x["guard"] else None
            pair.append(F.img(plots.gold_vs_kl(s.rows, shipped, "gold and proxy against KL"), "gold vs KL")
                        or not_run("gold vs KL", "no eval/gold_mean logged (set gold = MODULE:FUNCTION)"))
            pair.append(guard_table(x["guard"]) if x["guard"] else
                        not_run("the guard", f"no readable {s.name}/guard.json"))
        body.append('<div class="grid2">' + "".join(f"<div>{p}</div>" for p in pair) + "</div>")
        body.append("<h4>the same prompts, before and after</h4>" + before_after(x))
        out.append("".join(body))
    return "".join(out)


def sec_dpo(stages: list[Stage], F: Figures) -> str:
    mine = [s for s in stages if s.kind == "dpo"]
    if not mine:
        return not_run("DPO", "no rlhfkit dpo output in RUN")
    return "".join(notes(s) + (F.img(plots.dpo_curves(s.rows, f"DPO ({s.name})"), "DPO curves")
                               or not_run("DPO curves", f"{s.name}/metrics.jsonl has no dpo/ metrics"))
                   for s in mine)


EVAL_COLUMNS = ["win_rate", "judge_mean", "accuracy", "kl_to_baseline", "length_mean", "distinct_1", "distinct_2",
                "self_bleu", "distinct_answers", "people_win_rate", "arena_rating"]


def sec_eval(stages: list[Stage], F: Figures, run: Path) -> str:
    mine = [s for s in stages if s.kind == "eval"]
    if not mine:
        return not_run("evaluation (win rates, diversity)", "no rlhfkit eval output in RUN")
    out = []
    for s in mine:
        ev = read_json(s.path / "eval.json", s.notes)
        if not isinstance(ev, dict) or not ev:
            out.append(f"<h3>{esc(s.name)}</h3>" + notes(s) + not_run("evaluation", f"no {s.name}/eval.json"))
            continue
        models = {short(m, run): v for m, v in ev.items() if isinstance(v, dict)}
        base = short(s.config.get("baseline") or next(iter(ev)), run)
        prompts = s.config.get("prompts", "")
        pair = [F.img(plots.win_rates(models, base, f"win rate over {base} ({s.name})"), "win rates")
                or not_run("win rates", "no win_rate in eval.json"),
                F.img(plots.diversity(models, f"diversity ({s.name})"), "diversity")
                or not_run("diversity", "no distinct_n / self_bleu in eval.json")]
        cols = [c for c in EVAL_COLUMNS if any(c in v for v in models.values())]
        rows = []
        for m, v in models.items():
            cells = [esc(m + (" (baseline)" if m == base else ""))]
            for c in cols:
                cell = fmt(v.get(c)) if not isinstance(v.get(c), (list, dict)) else json.dumps(v.get(c))
                if c == "win_rate" and isinstance(v.get("win_rate_ci"), list) and len(v["win_rate_ci"]) == 2:
                    cell += " [" + ", ".join(fmt(b) for b in v["win_rate_ci"]) + "]"
                cells.append(esc(cell))
            rows.append(cells)
        out.append(f"<h3>{esc(s.name)} <span class=\"muted\">judge {esc(s.config.get('judge', '?'))}; "
                   f"prompts {esc(short(prompts, run))}</span></h3>" + notes(s)
                   + '<div class="grid2">' + "".join(f"<div>{p}</div>" for p in pair) + "</div>"
                   + table(["model"] + [esc(c) for c in cols], rows) + eval_samples(s, list(models), run))
    return "".join(out)


def eval_samples(s: Stage, models: list[str], run: Path, limit: int = 4) -> str:
    recs, _ = read_rows(s.path / "samples.jsonl")
    first_ = [r for r in recs if r.get("sample", 0) == 0]
    prompts = list(dict.fromkeys(r.get("prompt", "") for r in first_))[:limit]
    if not prompts:
        return ""
    by = {(short(str(r.get("model", "")), run), r.get("prompt", "")): r for r in first_}
    rows = [[f'<div class="text">{esc(p)}</div>'] + [response_cell(by.get((m, p))) for m in models] for p in prompts]
    return "<h4>first sample per model</h4>" + table(["prompt"] + [esc(m) for m in models], rows, "samples")


def sec_arena(stages: list[Stage], F: Figures, run: Path) -> str:
    for s in stages:
        st = feedback_stats(s) if s.kind == "feedback" else None
        if st and st["arena"]:
            ratings = {short(m, run): r for m, r in st["arena"].items()}
            def elo(v) -> str:  # Elo points: no decimals
                return f"{v:.0f}" if plots.number(v) else "–"

            rows = [[esc(m), esc(elo(r["rating"])), esc(f"{elo(r.get('low'))} .. {elo(r.get('high'))}"),
                     esc(fmt(r.get("games")))] for m, r in ratings.items()]
            return (F.img(plots.arena(ratings), "arena ratings")
                    + table(["checkpoint", "rating", "95% CI", "games"], rows))
    return not_run("arena ratings", "no arena votes in a feedback store (rlhfkit label RUN --arena)")


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#222;background:#fff}
h1{margin:24px 0 4px}h2{margin-top:40px;border-bottom:2px solid #e3e3e3;padding-bottom:4px}
h3{margin:24px 0 8px}h4{margin:16px 0 6px}
nav a{margin-right:14px;white-space:nowrap;display:inline-block}
@media (max-width:600px){body{padding:0 12px 32px}}.muted{color:#888;font-weight:normal;font-size:.9em}
.pipeline{display:flex;flex-wrap:wrap;align-items:stretch;gap:6px}
.card{border:1px solid #cfd8e3;border-radius:8px;padding:8px 10px;min-width:120px;background:#f6f9fc}
.card h3{margin:0;font-size:15px}.card .dir{margin:0 0 4px;color:#777;font:12px monospace}
.card dl{margin:0;font-size:12.5px;display:grid;grid-template-columns:auto auto;gap:0 8px}
.card dt{color:#666}.card dd{margin:0;font-weight:600;text-align:right;white-space:nowrap}
.card.missing{background:#fafafa;border-style:dashed;color:#999}.card.missing p{margin:4px 0 0;font-size:13px}
.arrow{align-self:center;color:#999;font-size:20px}
figure{margin:8px 0}img{max-width:100%;height:auto;border:1px solid #eee}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(460px,100%),1fr));gap:16px;align-items:start}
table{border-collapse:collapse;margin:8px 0;font-size:13.5px}
th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f2f4f7}
table.samples{width:100%;table-layout:fixed}.text{white-space:pre-wrap;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}.scores{color:#666;font-size:12px;margin-top:2px}
.notrun{color:#8a6d3b;background:#fcf8e3;border-left:3px solid #e5c07b;padding:4px 10px;margin:6px 0}
.note{color:#a94442;font-size:13px;margin:4px 0}
"""


def render(run: Path) -> tuple[str, int]:
    """The whole page for RUN -> (html, number of figures)."""
    stages = discover(run)
    F = Figures()
    parts = [
        ("pipeline", "The pipeline", pipeline(stages, run)),
        ("lm", "Pre-training and SFT", sec_lm(stages, F)),
        ("feedback", "Rankings", sec_feedback(stages, run)),
        ("reward", "Reward model", sec_reward(stages, F, run)),
        ("rlhf", "RLHF: proxy, the person's score, KL and the guard", sec_rl(stages, F, False)),
        ("verifiable", "RL with a verifier: arithmetic", sec_rl(stages, F, True)),
        ("dpo", "DPO", sec_dpo(stages, F)),
        ("eval", "Evaluation: win rates and diversity", sec_eval(stages, F, run)),
        ("arena", "Arena", sec_arena(stages, F, run)),
    ]
    nav = "".join(f'<a href="#{k}">{esc(t.split(":")[0])}</a>' for k, t, _ in parts)
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>{h}</section>' for k, t, h in parts)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>rlhfkit report: {esc(run.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>rlhfkit report: {esc(run.name)}</h1>"
            f'<p class="muted">{esc(run.resolve())} · {len(stages)} stage directories · written {esc(when)}</p>'
            f"<nav>{nav}</nav>{body}</body></html>\n")
    return page, F.n


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    page, n = render(run)
    out = Path(out) if out else run / "report.html"
    atomic_write_text(out, page)
    print(f"report: {n} figures -> {out}")
    return out


def cli(name: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"rlhfkit {name}", description=__doc__.strip().split("\n")[0])
    p.add_argument("run", help="run directory (the stages' outputs: RUN/base, RUN/sft, RUN/rm, RUN/ppo, ...)")
    p.add_argument("--out", help="where to write the page (default RUN/report.html)")
    a = p.parse_args(argv)
    write_report(a.run, a.out)
    return 0
