"""The controller's wiring that is decided without a cluster."""

from __future__ import annotations

import pytest

from podgate.controller.manager import POLLS_PER_PERIOD, Controller
from podgate.controller.settings import ControllerSettings


@pytest.mark.parametrize(("pending", "period"), [(0, 0.1), (1, 0.1), (POLLS_PER_PERIOD, 0.1), (50, 0.5)])
def test_pending_services_are_read_every_poll_period_stretched_beyond_ten(
    pending: int, period: float
) -> None:
    controller = Controller.__new__(Controller)  # no cluster: only what the period reads
    controller.settings = ControllerSettings(poll_period=0.1)
    controller._polling = {f"ns/s{i}" for i in range(pending)}
    assert controller._poll_period() == pytest.approx(period)
