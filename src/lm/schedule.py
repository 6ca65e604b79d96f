"""Step-indexed integer schedules, used for batch-size schedules.

`train_batch_size` may be an int or a list of `{start, value}` phases. A `BatchSchedule`
answers, for any step, the batch size and the index of the first example of that step's
batch, so a resumed run reads exactly the examples an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class ScheduleStep:
    """One phase of an integer schedule: from step `start` on, the value is `value`."""

    start: int
    value: int


IntSchedule = Sequence[ScheduleStep]


def validate_int_schedule(schedule: IntSchedule) -> None:
    if not schedule:
        raise ValueError("an integer schedule needs at least one {start, value} phase")
    if schedule[0].start != 0:
        raise ValueError(
            f"the first phase of a schedule must start at step 0, not {schedule[0].start}"
        )
    for prev, cur in zip(schedule, schedule[1:], strict=False):
        if cur.start <= prev.start:
            raise ValueError(
                f"schedule phases must have strictly increasing starts: {prev.start} then {cur.start}"
            )
    for phase in schedule:
        if phase.value <= 0:
            raise ValueError(
                f"schedule value must be positive, got {phase.value} at step {phase.start}"
            )


def value_at_step(schedule: int | IntSchedule, step: int) -> int:
    if isinstance(schedule, int):
        return schedule
    current = schedule[0].value
    for phase in schedule:
        if phase.start > step:
            break
        current = phase.value
    return current


def distinct_values(schedule: int | IntSchedule) -> list[int]:
    if isinstance(schedule, int):
        return [schedule]
    return sorted({phase.value for phase in schedule})


class BatchSchedule:
    """Batch size and data offset per step for a constant or scheduled batch size."""

    def __init__(self, schedule: int | IntSchedule):
        if not isinstance(schedule, int):
            schedule = [s if isinstance(s, ScheduleStep) else ScheduleStep(**s) for s in schedule]
            validate_int_schedule(schedule)
        self.schedule: int | list[ScheduleStep] = schedule
        # Offsets of each phase's first example, so lookups are O(#phases).
        self._phase_offsets: list[tuple[int, int, int]] = []  # (start_step, start_offset, size)
        if isinstance(schedule, int):
            self._phase_offsets.append((0, 0, schedule))
        else:
            offset = 0
            for i, phase in enumerate(schedule):
                self._phase_offsets.append((phase.start, offset, phase.value))
                if i + 1 < len(schedule):
                    offset += (schedule[i + 1].start - phase.start) * phase.value

    def batch_size_at_step(self, step: int) -> int:
        return self._phase(step)[2]

    def global_data_offset_by_step(self, step: int) -> int:
        """Index of the first example of step `step`'s batch."""
        start, offset, size = self._phase(step)
        return offset + (step - start) * size

    def _phase(self, step: int) -> tuple[int, int, int]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        current = self._phase_offsets[0]
        for phase in self._phase_offsets:
            if phase[0] > step:
                break
            current = phase
        return current

    @property
    def is_constant(self) -> bool:
        return isinstance(self.schedule, int) or len(self.schedule) == 1

    def phases(self) -> list[ScheduleStep]:
        if isinstance(self.schedule, int):
            return [ScheduleStep(0, self.schedule)]
        return list(self.schedule)
