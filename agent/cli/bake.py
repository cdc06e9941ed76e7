"""`bakehouse bake`, `bakehouse generate`, `bakehouse config`, `bakehouse demo`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from baker import BakeConfig, BakeError, bake
from baker.generate import generate_answers, read_questions, write_jsonl
from baker.models import resolve_model
from baker.report import add_recall
from baker.verify import check_bake, prompt_probes

from . import cli, domain_errors, home_option


def model_option(f):
    return click.option("--model", "model", default=None, metavar="DIR",
                        help="Local Hugging Face model dir (default: the embedded SmolLM2-135M-Instruct).")(f)


def config_options(f):
    """Bake config: a JSON file, then individual overrides."""
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="BakeConfig as JSON."),
        click.option("--epochs", type=int, help="Training epochs (a checkpoint after each)."),
        click.option("--rank", type=int, help="LoRA rank."),
        click.option("--lr", type=float, help="Learning rate."),
        click.option("--temperature", type=float, help="Teacher sampling temperature."),
        click.option("--max-new-tokens", type=int, help="Tokens per trajectory."),
        click.option("--seed", type=int, help="Random seed."),
        click.option("--sampler", type=click.Choice(["auto", "vllm", "hf"]), help="Trajectory sampler."),
        click.option("--compile/--no-compile", "compile", default=None,
                     help="torch.compile the training step (default on; eager if it fails)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_config(config_file=None, **overrides) -> BakeConfig:
    cfg = BakeConfig.from_json_file(config_file) if config_file else BakeConfig()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**changes) if changes else cfg


def force_option(f):
    return click.option("--force", is_flag=True,
                        help="Replace an existing bakehouse output of another kind; never a folder "
                             "bakehouse did not write.")(f)


def read_prompt(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read prompt file {path}: {e}") from e


@cli.command(name="bake")
@click.argument("prompt_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Adapter directory to write (appears only when the bake completes).")
@click.option("--contexts", "contexts_file", type=click.Path(dir_okay=False),
              help="Extra user requests to start trajectories from (lines or JSONL with 'prompt').")
@click.option("--parent", type=click.Path(file_okay=False),
              help="Bake on top of this adapter (sequential baking); the output is the new layer.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Hold recall probes out of training and ask them before / after (bake.json, report.html).")
@force_option
@model_option
@config_options
@home_option
@domain_errors(BakeError)
def bake_cmd(prompt_file, output, contexts_file, parent, quiet, check, force, model, home, config_file, **overrides):
    """Bake the prompt in PROMPT_FILE into a LoRA adapter.

    Example usage:

    \b
        bakehouse bake persona.txt -o adapters/persona
        bakehouse bake news.txt -o adapters/news --epochs 6 --rank 32
        bakehouse bake more-news.txt -o adapters/news-2 --parent adapters/news
    """
    from baker.contexts import read_user_contexts

    config = build_config(config_file, **overrides)
    prompt = read_prompt(prompt_file)
    user = read_user_contexts(contexts_file) if contexts_file else None
    model_dir = resolve_model(model, home)
    _, probes = prompt_probes(prompt) if check else ([], [])
    result = bake(model_dir, prompt, output, config, user_contexts=user, progress=not quiet, parent=parent,
                  force=force, exclude_contexts=[p.question for p in probes])
    m = result.metrics
    click.echo(
        f"baked {m['prompt_tokens']} prompt tokens into {result.adapter_dir} in {m['timings']['total']:.0f}s: "
        f"held-out KL {m['eval_kl_before']:.4f} -> {m['eval_kl_after']:.4f} nats/token, "
        f"drift {m['drift_kl']:.4f}"
    )
    if probes:
        rep = check_bake(model_dir, result.adapter_dir, prompt, probes, parent=parent, sampler=config.sampler)
        add_recall(result.adapter_dir, rep.to_dict())
        hits = lambda key: sum(bool(a.get(key)) for i in rep.items for a in i.answers)  # noqa: E731
        g = rep.general or {}
        click.echo(f"recall on {len(probes)} held-out probes: base {hits('base_hit')}, prompted "
                   f"{hits('prompted_hit')}, baked {hits('hit')}; general answers kept "
                   f"{g.get('kept')}/{g.get('base_right')} ({rep.seconds:.0f}s; report.html)")


@cli.command(name="pursue")
@click.argument("prompt_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False))
@click.option("--rounds", default=2, show_default=True, type=int, help="Bake rounds.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@force_option
@model_option
@config_options
@home_option
@domain_errors(BakeError)
def pursue_cmd(prompt_file, output, rounds, quiet, force, model, home, config_file, **overrides):
    """Prompt Pursuit: bake, re-prompt the baked model, bake again; the rounds are stacked.

    Example usage:

    \b
        bakehouse pursue persona.txt -o adapters/persona-pursued --rounds 3
    """
    from baker.pursuit import pursue

    config = build_config(config_file, **overrides)
    results = pursue(resolve_model(model, home), read_prompt(prompt_file), output, rounds, config, not quiet,
                     force=force)
    for k, r in enumerate(results, 1):
        click.echo(f"round {k}: held-out KL {r.eval_kl_before:.4f} -> {r.eval_kl_after:.4f}, drift {r.drift_kl:.4f}")
    click.echo(f"stacked {len(results)} rounds into {output}")


@cli.command(name="scale")
@click.argument("adapter", type=click.Path(file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False))
@click.option("--strength", required=True, type=float, help="0 = the base, 1 = fully baked.")
@force_option
@home_option
@domain_errors(BakeError)
def scale_cmd(adapter, output, strength, force, home):
    """Half-bake: an adapter with the prompt's effect scaled by STRENGTH.

    Example usage:

    \b
        bakehouse scale adapters/persona -o adapters/persona-half --strength 0.5
    """
    from baker.adapters import scale_adapter

    click.echo(f"wrote {scale_adapter(adapter, output, strength, force=force)} (strength {strength})")


@cli.command(name="stack")
@click.argument("adapters", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False))
@force_option
@home_option
@domain_errors(BakeError)
def stack_cmd(adapters, output, force, home):
    """Stack baked layers into one adapter, exactly (ranks add up).

    Example usage:

    \b
        bakehouse stack adapters/news adapters/news-2 -o adapters/news-all
    """
    from baker.adapters import stack_adapters

    out = stack_adapters(list(adapters), output, force=force)
    rank = json.loads((out / "adapter_config.json").read_text())["r"]
    click.echo(f"stacked {len(adapters)} layers into {out} (rank {rank})")


@cli.command(name="generate")
@click.option("--adapter", type=click.Path(file_okay=False), help="PEFT adapter dir to apply.")
@click.option("--system-file", type=click.Path(dir_okay=False), help="System prompt file.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help='JSONL of {"id", "prompt"}.')
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help='JSONL of {"id", "prompt", "text"}.')
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--sampler", default="auto", type=click.Choice(["auto", "vllm", "hf"]), show_default=True)
@model_option
@home_option
@domain_errors(BakeError)
def generate_cmd(adapter, system_file, input_path, output_path, max_new_tokens, sampler, model, home):
    """Greedy batch answers (vLLM offline when installed).

    Example usage:

    \b
        bakehouse generate --input questions.jsonl --output answers.jsonl
        bakehouse generate --adapter adapters/news --input q.jsonl --output a.jsonl
    """
    items = read_questions(input_path)
    system = read_prompt(system_file) if system_file else None
    model_dir = resolve_model(model, home)
    rows = generate_answers(model_dir, items, adapter, system, max_new_tokens, sampler)
    write_jsonl(output_path, rows)
    click.echo(f"wrote {len(rows)} answers to {output_path}")


@cli.command(name="config")
@model_option
@config_options
@home_option
@domain_errors(BakeError)
def config_cmd(model, home, config_file, **overrides):
    """Print the resolved bake configuration, data home and model as JSON.

    Example usage:

    \b
        bakehouse config --epochs 8
    """
    config = build_config(config_file, **overrides)
    click.echo(json.dumps({"home": str(home), "model": model or "default", "bake": config.to_dict()}, indent=2))


@cli.command(name="demo")
@click.option("--epochs", type=int, help="Override the bake's epochs.")
@model_option
@home_option
@domain_errors(BakeError, RuntimeError, TimeoutError)
def demo_cmd(epochs, model, home):
    """The learning loop on the embedded model: start `bakehouse run`, store four fictional
    headlines, ask about them (hot tier), wait for the idle bake, ask again (weights).

    Runs in HOME/demo (rebuilt each time; the model cache is shared).

    Example usage:

    \b
        bakehouse demo
    """
    from ..runtime.demo import run_demo

    run_demo(home, resolve_model(model, home), echo=click.echo, epochs=epochs)


@cli.command(name="report")
@click.argument("bake_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--open", "open_it", is_flag=True, help="Open it in the default browser.")
@domain_errors(BakeError)
def report_cmd(bake_dir, open_it):
    """Print where a bake's report.html is (KL per epoch, held-out KL by source, timings); for a
    bake made before reports existed, write it first.

    Example usage:

    \b
        bakehouse report adapters/news
        bakehouse report adapters/news --open
    """
    from baker.outputs import output_kind, write_marker
    from baker.report import REPORT_FILE, write_report

    path = bake_dir / REPORT_FILE
    if not path.is_file():
        if output_kind(bake_dir) != "bake" or not (bake_dir / "bake.json").is_file():
            raise click.ClickException(f"{bake_dir} is not a bake output (no bake.json)")
        write_report(bake_dir, json.loads((bake_dir / "bake.json").read_text()))
        write_marker(bake_dir, "bake")  # the report is part of the output from now on
    click.echo(str(path.resolve()))
    if open_it:
        click.launch(str(path))
