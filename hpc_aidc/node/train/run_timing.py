"""Step and checkpoint times of a training run, for its throughput, model FLOPs utilisation and the
warning grace a checkpoint needs; the process's start-up phases."""

from __future__ import annotations

import time

# Steps at the start of each run left out of model FLOPs utilisation and the grace's step time: the first
# ones allocate memory, build kernels and fill the pipeline.
WARMUP_STEPS = 3


class RunTiming:
    """Step and checkpoint times of this run: steps after the warm-up count for throughput and MFU, and
    the longest step and checkpoint write for the warning grace."""

    def __init__(self, warmup_steps: int = WARMUP_STEPS) -> None:
        self.warmup_steps = warmup_steps
        self.steps = self.measured_steps = 0
        self.measured_s = self.measured_tokens = 0.0
        self.step_s_max = self.checkpoint_s_max = self.checkpoint_s_last = self.checkpoint_s_total = 0.0
        self._first_steps_max = 0.0
        self.warned_short = False

    def step(self, seconds: float, tokens: float) -> None:
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self._first_steps_max = max(self._first_steps_max, seconds)
            return
        self.measured_steps += 1
        self.measured_s += seconds
        self.measured_tokens += tokens
        self.step_s_max = max(self.step_s_max, seconds)

    def checkpoint(self, seconds: float) -> None:
        self.checkpoint_s_last = seconds
        self.checkpoint_s_total += seconds
        self.checkpoint_s_max = max(self.checkpoint_s_max, seconds)
        if not self.measured_steps:  # a checkpoint before any step past the warm-up: go by those
            self.step_s_max = max(self.step_s_max, self._first_steps_max)

    def tokens_per_s(self) -> float | None:
        return self.measured_tokens / self.measured_s if self.measured_s > 0 else None


class StartupPhases:
    """Seconds spent in each start-up phase, from the process's own start ("process": Python, submitit,
    unpickling the task), logged with the start event so a slow start can be traced to its phase."""

    def __init__(self) -> None:
        import psutil  # a DeepSpeed dependency

        self._last = time.time()
        self.seconds: dict[str, float] = {"process": round(self._last - psutil.Process().create_time(), 3)}

    def done(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now
