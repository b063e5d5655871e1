"""What the bench runs: a :class:`quarklab.config.QuarkConfig` for every knob a Quark run has, and the
few knobs of the bench's own (repetitions, threads, how many prompts and steps to time)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from quarklab.config import QuarkConfig, preset
from quarklab.errors import QuarkError
from quarklab.names import TINY

# Prompt length, in words (``len(prompt.split())`` of the whole prompt: the SUBREDDIT/TITLE/POST
# header, the post and "TL;DR:"), of real Reddit TL;DR posts at the quantile levels 0, 0.05, ..., 1
# (numpy.quantile, linear interpolation). Measured once from the 1,945 held-out rows of
# ../shared/data/tldr_sample.jsonl (OpenAI's filtered TL;DR, see that folder's SOURCES.md; the file
# is not shipped with quarklab, so only these 21 numbers are). Median 267 words; the tiny world's
# own prompts are ~70 words, so these prompts are the length a real TL;DR run samples from.
TLDR_PROMPT_WORD_QUANTILES: tuple[int, ...] = (25, 142, 161, 177, 189, 204, 216, 227, 241, 254, 267, 281, 293,
                                               309, 321, 331, 343, 357, 372, 388, 426)
QUANTILE_LEVELS = tuple(float(x) for x in np.linspace(0.0, 1.0, len(TLDR_PROMPT_WORD_QUANTILES)))

# name: (comparison, threshold, what it means)
TARGETS: dict[str, tuple[str, float, str]] = {
    "sampler_vs_raw": (">=", 0.9, "quarklab.sample tokens/s over one raw batched generate"),
    "sampler_vs_loop": (">=", 5.0, "quarklab.sample tokens/s over a one-prompt-per-call generate loop"),
    "kl_step_cost": ("<=", 1.6, "NLL-only step tokens/s over NLL + KL + entropy step tokens/s"),
    "nll_vs_trl": (">=", 1.0, "quarklab NLL step tokens/s over TRL SFTTrainer step tokens/s"),
    "bench_wall_seconds": ("<=", 300.0, "the full default bench on a 2-core CPU, world load included"),
}

# The bench's Quark run: preset("tiny") with one iteration over fewer prompts (the full bench) ...
FULL_RUN = dict(iterations=1, prompts_per_iteration=32, eval_prompts=32)
# ... or tiny sizes (--quick, for tests).
QUICK_RUN = dict(iterations=1, prompts_per_iteration=4, samples_per_prompt=5, max_new_tokens=8,
                 eval_max_new_tokens=8, sample_batch_size=16, batch_size=8, epochs_per_iteration=1,
                 eval_prompts=4, eval_batch_size=4)
QUICK_BENCH = dict(quick=True, reps=2, sample_prompts=4, train_steps=1)


@dataclass
class BenchSettings:
    """The run's config plus the bench's own knobs; :meth:`make` builds the default or ``--quick`` one.

    Every section reads its sizes from ``config``: sampling uses ``samples_per_prompt``,
    ``temperature``, ``top_p``, ``top_k``, ``max_new_tokens`` and ``sample_batch_size``; training uses
    ``batch_size``, ``grad_accum``, ``lr``, ``kl_coef``, ``entropy_coef``, ``num_quantiles``, ...; the
    iteration runs ``config`` itself. The model is ``config.policy``, the device ``config.device``.
    """

    config: QuarkConfig = field(default_factory=lambda: preset("tiny", **FULL_RUN, device="cpu"))
    quick: bool = False
    warmup: int = 1
    """Untimed runs of each case before the timed ones."""
    reps: int = 3
    """Timed repetitions per case; each figure is their median."""
    threads: int | None = None
    """torch CPU threads (``torch.set_num_threads``); None = torch's default (one per core)."""
    sample_prompts: int = 8
    """Synthetic TL;DR-length prompts in the sampling section (each sampled ``config.samples_per_prompt`` times)."""
    train_steps: int = 3
    """Timed optimizer steps per training repetition (each call runs one more, untimed, first)."""

    @classmethod
    def make(cls, *, quick: bool = False, model: str | None = None, device: str = "cpu", **changes) -> "BenchSettings":
        """The default (or ``--quick``) bench of ``model`` (None: the tiny world's SFT model) on ``device``."""
        config = preset("tiny", **(QUICK_RUN if quick else FULL_RUN), device=device, policy=model or TINY)
        return cls(config=config, **{**(QUICK_BENCH if quick else {}), **changes})

    @property
    def model(self) -> str | None:
        """The model asked for, None for the tiny world's."""
        return None if self.config.policy == TINY else self.config.policy

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BenchSettings":
        return cls(**{**d, "config": QuarkConfig.from_dict(d["config"])})

    def validate(self) -> None:
        device = self.config.device
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise QuarkError(f"bench --device must be cpu or cuda, got {device!r}")
        if self.warmup < 1 or self.reps < 1:
            raise QuarkError("bench needs at least one warm-up and one repetition")
        for name in ("sample_prompts", "train_steps"):
            if getattr(self, name) < 1:
                raise QuarkError(f"bench setting {name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise QuarkError(f"bench --threads must be >= 1, got {self.threads}")
