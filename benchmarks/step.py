"""``kvrl bench step``: one RL iteration end to end, kvrl against TRL's ``GRPOTrainer``.

Both sides train the same tiny Kimi-VL checkpoint on the same text prompts (the tiny RL data's arithmetic
rows, chat-formatted the same way), with the same prompts per iteration, samples per prompt, max tokens,
temperature, learning rate and optimizer steps per iteration, and the same reward: kvrl's verifier verdict
plus the Kimi k1.5 length reward (``rewards.total_rewards``). An iteration is sample, generate, score,
old log-probs, the optimizer steps and (kvrl only) the weight sync; the first one of each side is a warm-up,
and start-up (Ray, vLLM engines, DeepSpeed, the trainer) is excluded.

kvrl: the tiny RL config in-process (2 vLLM engines + 2 DeepSpeed ranks on Ray, OPMD).
TRL: ``GRPOTrainer`` in this process on CPU with transformers ``generate`` (TRL's vLLM path needs CUDA),
one generation batch per iteration split into the same number of optimizer steps, GRPO's default loss.

Both sides are timed over the same span: from one iteration's mark to the next, everything in between
(TRL: its step-end callbacks; kvrl: the iterations' start times in ``metrics.jsonl``, its logging
included). Neither saves a checkpoint in the timed iterations.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from transformers import TrainerCallback

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from kimivl.tiny import make_tiny
from rewards import total_rewards, verify_response
from rl.trainer import RLConfig
from rollout.prompts import chat_prompt
from runkit.config import load_config

from .common import result
from .iteration import CONFIG, PHASES, kvrl_iterations

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "data" / "rl_train.jsonl"
NEEDS_TRL = "kvrl bench step needs TRL: pip install -e '.[bench]'"
STEPS = 2  # optimizer steps per iteration, each on a different half of the batch (one pass), as TRL takes
LR = 1.0e-3
# (prompts per iteration, samples per prompt, max tokens): the tiny config's size, and a larger batch
SIZES = {"quick": [(4, 2, 16)], "default": [(8, 4, 48), (16, 8, 128)]}


def run(quick: bool = False, repeats: int = 3, model: str | None = None) -> list[dict]:
    try:
        import trl
    except ImportError as e:
        raise RuntimeError(NEEDS_TRL) from e

    work = Path(tempfile.mkdtemp(prefix="kvrl-bench-step-"))
    model = str(model or make_tiny(work / "tiny"))
    data = _text_problems(work / "problems.jsonl")
    sizes = SIZES["quick" if quick else "default"]
    return [
        _one(trl.__version__, model, data, *size, repeats, work / f"trl-{i}") for i, size in enumerate(sizes)
    ]


def _one(
    trl_version: str, model: str, data: Path, prompts: int, n: int, max_tokens: int, repeats: int, out: Path
):
    overrides = [
        f"data.path={data}",
        f"trainer.prompts_per_iteration={prompts}",
        f"trainer.optimizer_steps_per_iteration={STEPS}",
        "trainer.epochs_per_iteration=1",
        f"rollout.sampling.n={n}",
        f"rollout.sampling.max_tokens={max_tokens}",
        f"rollout.chunk_size={max(1, prompts // 2)}",  # both engines get half the prompts
        f"rollout.max_num_seqs={prompts * n}",
        f"learner.lr={LR}",
    ]
    kvrl = kvrl_iterations(model, overrides, repeats)
    # the same with the next iteration's rollout overlapping this one's learning (trainer.max_staleness)
    # (its last iteration samples nothing ahead, so it is left out, as the first is)
    pipelined = kvrl_iterations(model, [*overrides, "trainer.max_staleness=1"], repeats, tail=1)
    load_before = os.getloadavg()[0]
    baseline = _trl_iterations(model, data, prompts, n, max_tokens, repeats, out)
    return result(
        "step",
        [r["time_iteration"] for r in kvrl],
        baseline["runs"],
        "s/iteration",
        higher_is_better=False,
        size=f"{prompts} prompts x {n} samples x {max_tokens} tokens",
        prompts_per_iteration=prompts,
        samples_per_prompt=n,
        max_tokens=max_tokens,
        optimizer_steps_per_iteration=STEPS,
        learning_rate=LR,
        phases={k: statistics.median(r[k] for r in kvrl) for k in PHASES},
        # each side's iteration is timed over the same span, mark to mark with everything in between
        # (logging included); kvrl's sample-to-eval part alone, for comparison with earlier rows:
        kvrl_inner_runs=[r["time_iteration_inner"] for r in kvrl],
        pipelined_runs=[r["time_iteration"] for r in pipelined],
        pipelined_ratio=statistics.median(baseline["runs"])
        / statistics.median(r["time_iteration"] for r in pipelined),
        baseline_phases=baseline["phases"],
        kvrl_tokens=[r["tokens"] for r in kvrl],
        baseline_tokens=baseline["tokens"],
        trl_version=trl_version,
        baseline_torch_threads=baseline["torch_threads"],
        # other processes on the 2 cores slow either side several-fold: read a high load as a bad run
        load_average_1min=[load_before, os.getloadavg()[0]],
        inputs=(
            "text-only prompts on both sides: TRL's GRPOTrainer passes image_grid_thw to vision models, "
            "Kimi-VL takes image_grid_hws, so it cannot feed this model images"
        ),
        baseline_description=(
            f"TRL {trl_version} GRPOTrainer on the same model in one process on CPU: transformers "
            f"generate (use_vllm=False; TRL's vLLM path needs CUDA), GRPO loss ({baseline['loss_type']}, "
            f"beta 0), one generation batch per iteration over {STEPS} optimizer steps, rewards "
            "in-process, no weight sync; kvrl: 2 vLLM engines + 2 DeepSpeed ranks on Ray, OPMD, rewards "
            "in a sandboxed process pool, in-place weight sync to the engines"
        ),
        model=model,
    )


def _text_problems(path: Path) -> Path:
    """The tiny RL data's rows without images (both sides see the same text-only problems)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if not r.get("images")))
    return path


class _Clock(TrainerCallback):
    """Wall time at the end of every STEPS-th optimizer step (an iteration's end), plus phase timings."""

    @staticmethod
    def wrap(fn, into: list[float]):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - start)

        return timed

    def __init__(self):
        self.marks: list[float] = []
        self.rollout: list[float] = []
        self.reward: list[float] = []
        self.tokens: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % STEPS == 0:
            self.marks.append(time.perf_counter())


def _trl_iterations(
    model: str, data: Path, prompts: int, n: int, max_tokens: int, repeats: int, out: Path
) -> dict:
    """``repeats`` timed GRPOTrainer iterations after one warm-up: seconds, phases and generated tokens."""
    import torch
    from trl import GRPOTrainer

    rewards_cfg = load_config(RLConfig, CONFIG, []).rewards  # its default verifier and length reward
    processor = KimiVLProcessor.from_pretrained(model)
    clock = _Clock()
    args = _grpo_config(out, prompts, n, max_tokens, repeats)
    trainer = GRPOTrainer(
        model=_policy(model),
        reward_funcs=_reward(n, rewards_cfg.length, clock),
        args=args,
        train_dataset=_dataset(processor, data, rewards_cfg.verifier),
        processing_class=processor.tokenizer,
        callbacks=[clock],
    )
    trainer._generate_single_turn = clock.wrap(trainer._generate_single_turn, clock.rollout)
    trainer.train()
    runs = [b - a for a, b in pairwise(clock.marks)]
    if len(runs) != repeats:
        raise RuntimeError(f"TRL ran {len(clock.marks)} iterations; expected {repeats + 1}")
    rollout, reward = clock.rollout[1:], clock.reward[1:]  # without the warm-up iteration's
    phases = {
        "time_rollout": statistics.median(rollout),
        "time_reward": statistics.median(reward),
        # old log-probs, the optimizer steps and the trainer's own bookkeeping: the remainder
        "time_learn": statistics.median(t - g - r for t, g, r in zip(runs, rollout, reward, strict=True)),
        "time_sync": 0.0,  # the policy generates itself: nothing to sync
    }
    return {
        "runs": runs,
        "phases": phases,
        "tokens": clock.tokens[1:],
        "loss_type": args.loss_type,
        "torch_threads": torch.get_num_threads(),
    }


def _grpo_config(out: Path, prompts: int, n: int, max_tokens: int, repeats: int):
    """kvrl's tiny RL settings in GRPOConfig terms: one generation batch of ``prompts x n`` samples per
    STEPS optimizer steps of half of it each, kvrl's optimizer (Adam betas 0.9/0.95, clip 1.0, constant
    lr, no weight decay), fp32, no reference model, nothing saved, logged or evaluated."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out),
        max_steps=STEPS * (repeats + 1),
        per_device_train_batch_size=prompts * n // STEPS,
        gradient_accumulation_steps=1,
        steps_per_generation=STEPS,
        num_generations=n,
        max_completion_length=max_tokens,
        temperature=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        beta=0.0,
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # off in kvrl's learner too (TRL's default is on)
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def _dataset(processor, data: Path, default_verifier: str):
    """The problems as TRL prompts: already chat-formatted strings, so TRL applies no template of its own."""
    import datasets

    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    return datasets.Dataset.from_list(
        [
            {
                "prompt": chat_prompt(processor, r["question"]),
                "answer": str(r["answer"]),
                "verifier": r.get("verifier") or default_verifier,
            }
            for r in rows
        ]
    )


def _reward(n: int, penalty, clock: _Clock):
    """kvrl's reward as a TRL reward function: the verifier's verdict + the k1.5 length reward."""

    def reward(completions, completion_ids, answer, verifier, trainer_state, **_):
        start = time.perf_counter()
        correct = [
            verify_response(c, a, v).correct for c, a, v in zip(completions, answer, verifier, strict=True)
        ]
        lengths = [len(ids) for ids in completion_ids]
        groups = [i // n for i in range(len(completions))]  # a prompt's n samples are consecutive
        rewards = total_rewards(correct, lengths, groups, trainer_state.global_step // STEPS, penalty)
        clock.reward.append(time.perf_counter() - start)
        clock.tokens.append(sum(lengths))
        return rewards

    return reward


def _policy(model: str):
    """The Kimi-VL policy as TRL runs it, on text-only prompts.

    TRL's fused log-prob head replaces the forward with one that takes hidden states from
    ``model.base_model`` and projects them with ``model.get_output_embeddings()``; Kimi-VL has neither a
    separate backbone attribute nor a top-level head, so both are pointed at the model's own parts (same
    weights and math: ``hidden_states_only=True`` and the language model's head). A sampled
    ``<|media_pad|>`` is a plain token here, as in kvrl's engines and learner (its ``image_token_mask``).
    """
    import torch

    class TRLKimiVL(KimiVLForConditionalGeneration):
        @functools.wraps(KimiVLForConditionalGeneration.forward)  # generate checks kwargs against it
        def forward(self, input_ids=None, *args, **kwargs):
            if input_ids is not None and kwargs.get("pixel_values") is None:
                kwargs.setdefault("image_token_mask", torch.zeros_like(input_ids, dtype=torch.bool))
            return KimiVLForConditionalGeneration.forward(self, input_ids, *args, **kwargs)

        @property
        def base_model(self):
            return lambda *args, **kwargs: TRLKimiVL.forward(self, *args, hidden_states_only=True, **kwargs)

        def get_output_embeddings(self):
            return self.language_model.lm_head

    policy = KimiVLForConditionalGeneration.from_pretrained(model, dtype=torch.float32)
    policy.__class__ = TRLKimiVL  # after loading, so from_pretrained sees the plain class
    return policy
