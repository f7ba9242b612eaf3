"""`raydprm rollout generate|probe`: sample responses from a policy with either engine.

    raydprm rollout generate --model tiny-gpt2 --prompt "Hello" --max-new-tokens 16
    raydprm rollout generate --prompt "Hi" --n 4 --temperature 0.8 --seed 1 rollout.engine=vllm
    raydprm rollout probe --model tiny-gpt2     # engine vs teacher-forced logprobs

Sampling flags override the ``rollout`` section of the config (``--config`` /
``rollout.key=value``).
"""

from __future__ import annotations

import argparse
import json
import sys

from raydprm.cli.common import add_config_args, check_model_refs, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="Generate responses with the rollout engine (vLLM or transformers).",
                       description="Generate responses, or check an engine's logprobs against a teacher-forced pass.")
    rsub = p.add_subparsers(dest="rollout_cmd", metavar="ACTION", required=True)
    g = rsub.add_parser("generate", help="Sample responses for one or more prompts.")
    _common(g)
    g.add_argument("--prompt", "-p", action="append", default=None, help="A prompt (repeatable).")
    g.add_argument("--prompts-file", default=None, help="A text file with one prompt per line.")
    g.add_argument("--max-new-tokens", type=int, default=None, help="Tokens per response (rollout.max_new_tokens).")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (rollout.temperature).")
    g.add_argument("--top-p", type=float, default=None, help="Nucleus mass (rollout.top_p).")
    g.add_argument("--top-k", type=int, default=None, help="Top-k; 0 = off (rollout.top_k).")
    g.add_argument("--n", type=int, default=None, help="Samples per prompt (rollout.n).")
    g.add_argument("--seed", type=int, default=None, help="Sampling seed (rollout.seed).")
    g.add_argument("--stop", action="append", default=None, help="Stop string (repeatable; rollout.stop).")
    g.add_argument("--json", action="store_true", help="Print one JSON object per response.")
    g.set_defaults(handler=_generate)
    pr = rsub.add_parser("probe", help="Score the fixed weight-sync probe with the engine and with a "
                         "teacher-forced transformers pass; print the max logprob difference.")
    _common(pr)
    pr.set_defaults(handler=_probe)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Policy: kit name, directory or hub name (default: models.policy).")
    p.add_argument("--engine", default=None, choices=("transformers", "vllm"), help="Engine (rollout.engine).")
    add_config_args(p)


def _engine(args: argparse.Namespace):
    from raydprm.rollout.engine import engine_kwargs, make_engine

    cfg = config_from_args(args)
    if args.engine:
        cfg = cfg.override([f"rollout.engine={args.engine}"])
    check_model_refs(cfg, "models.policy", model=args.model)
    model = args.model or cfg.models.policy
    return cfg, make_engine(cfg.rollout.engine, model, **engine_kwargs(cfg.rollout, cfg.models.dtype))


def _generate(args: argparse.Namespace) -> int:
    from raydprm.errors import RaydprmError
    from raydprm.rollout.sampling import SamplingParams

    cfg = config_from_args(args)  # a bad config is reported before anything else
    check_model_refs(cfg, "models.policy", model=args.model)
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            with open(args.prompts_file) as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise RaydprmError(f"cannot read prompts file '{args.prompts_file}': {e.strerror}") from None
    if not prompts:
        raise RaydprmError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    changes = {k: v for k, v in dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      top_p=args.top_p, top_k=args.top_k, n=args.n, seed=args.seed).items()
               if v is not None}
    if args.stop:
        changes["stop"] = tuple(args.stop)
    sampling = SamplingParams.from_config(cfg.rollout, **changes)  # validated before the engine starts
    from raydprm.cluster.placement import check_sizes

    check_sizes(cfg, max_new_tokens=args.max_new_tokens, model=args.model)  # prompt + response fit the model
    cfg, engine = _engine(args)
    try:
        for r in engine.generate(prompts, sampling):
            if args.json:
                print(json.dumps({"prompt_index": r.prompt_index, "sample_index": r.sample_index,
                                  "prompt": prompts[r.prompt_index], "text": r.text, "token_ids": r.token_ids,
                                  "logprobs": r.logprobs, "finish_reason": r.finish_reason}))
            else:
                print(f"[{r.prompt_index}.{r.sample_index}] ({r.finish_reason}, {r.num_tokens} tokens, "
                      f"logprob {sum(r.logprobs):.2f}) {prompts[r.prompt_index]!r} -> {r.text!r}")
    finally:
        engine.shutdown()
    sys.stdout.flush()
    return 0


def _probe(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    from raydprm.models.tiny import resolve_model
    from raydprm.rollout.sync import check_probe, probe_logprobs, probe_sequence

    cfg, engine = _engine(args)
    try:
        ids = probe_sequence(engine.vocab_size, cfg.rollout.probe_length)
        got = engine.score([ids])[0]
        ref = AutoModelForCausalLM.from_pretrained(resolve_model(args.model or cfg.models.policy))
        diff = check_probe(probe_logprobs(ref, ids), got, cfg.rollout.probe_tolerance, engine.weight_version)
        print(f"probe OK: engine={engine.name} tokens={len(ids)} max|logprob diff|={diff:.3g} "
              f"(tolerance {cfg.rollout.probe_tolerance:g})")
    finally:
        engine.shutdown()
    return 0
