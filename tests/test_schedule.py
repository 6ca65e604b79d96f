import pytest

from lm.schedule import BatchSchedule, ScheduleStep


@pytest.mark.parametrize(
    "step, batch_size, offset",
    [
        (0, 32, 0),
        (500, 32, 16000),
        (999, 32, 31968),
        (1000, 64, 32000),
        (50000, 64, 32000 + 49000 * 64),
        (100000, 128, 32000 + 99000 * 64),
        (150000, 128, 6_368_000 + 50000 * 128),
    ],
)
def test_batch_schedule_reference_table(step, batch_size, offset):
    schedule = BatchSchedule(
        [ScheduleStep(0, 32), ScheduleStep(1000, 64), ScheduleStep(100000, 128)]
    )
    assert schedule.batch_size_at_step(step) == batch_size
    assert schedule.global_data_offset_by_step(step) == offset


def test_offsets_are_cumulative_sizes():
    schedule = BatchSchedule([ScheduleStep(0, 3), ScheduleStep(4, 5), ScheduleStep(6, 2)])
    expected = 0
    for step in range(12):
        assert schedule.global_data_offset_by_step(step) == expected
        expected += schedule.batch_size_at_step(step)


def test_constant_schedule():
    schedule = BatchSchedule(16)
    assert schedule.is_constant
    assert schedule.global_data_offset_by_step(10) == 160


@pytest.mark.parametrize(
    "phases, message",
    [
        ([], "at least one"),
        ([ScheduleStep(5, 8)], "start at step 0"),
        ([ScheduleStep(0, 8), ScheduleStep(0, 16)], "strictly increasing"),
        ([ScheduleStep(0, 0)], "positive"),
    ],
)
def test_invalid_schedules(phases, message):
    with pytest.raises(ValueError, match=message):
        BatchSchedule(phases)
