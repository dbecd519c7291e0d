"""The validation's calibration (docs/validation.md): fitted on the cover letter's
baselines only, in closed form from the guest model's own cost formulas."""

from __future__ import annotations

import pytest

from services.guest.core.willitscale import WillItScaleConfig
from services.sim.core_configs import workload_config
from services.sim.spec import load_spec
from services.sim.validation import COVER_LETTER, PF1, PF2, SEED_V15, calibrate


def test_the_calibration_reproduces_the_baselines_from_the_model_formulas():
    """Put the fitted numbers back into the model's per-fault time: each baseline's
    counter comes back to within 0.01 % (rounding of the fitted integers)."""
    cal = calibrate()
    for tasks in (1, 16):
        pf1 = WillItScaleConfig(
            test="page_fault1", thp=True, tasks=tasks, vcpus=16,
            zero_bytes_per_s=cal.zero_bytes_per_s, memory_bytes_per_s=cal.memory_bytes_per_s,
            fault_contention=cal.fault_contention,
        ).effective()  # fmt: skip
        per_thp_ns = pf1.thp_fault_ns + (2 << 20) * 1e9 / pf1.zero_bytes_per_s + 10 * pf1.unmap_ns
        counter = tasks * 512 / (per_thp_ns * 1e-9)
        assert counter == pytest.approx(COVER_LETTER[PF1, tasks]["baseline"][0], rel=1e-4)
        pf2 = WillItScaleConfig(
            test="page_fault2", tasks=tasks, vcpus=16, cow_fault_ns=cal.cow_fault_ns,
            memory_bytes_per_s=cal.memory_bytes_per_s, fault_contention=cal.fault_contention,
        ).effective()  # fmt: skip
        per_page_ns = pf2.cow_fault_ns + 4096 * 1e9 / pf2.copy_bytes_per_s + pf2.unmap_ns
        counter = tasks / (per_page_ns * 1e-9)
        assert counter == pytest.approx(COVER_LETTER[PF2, tasks]["baseline"][0], rel=1e-3)


def test_the_experiment_file_carries_the_fitted_numbers():
    spec = load_spec(str(SEED_V15))
    step = workload_config(spec.guest_groups[0]).steps[1].workload
    cal = calibrate()
    assert step.zero_bytes_per_s == pytest.approx(cal.zero_bytes_per_s, rel=1e-3)
    assert step.memory_bytes_per_s == pytest.approx(cal.memory_bytes_per_s, rel=1e-3)
    assert step.fault_contention == pytest.approx(cal.fault_contention, rel=1e-3)


def test_sharing_and_contention_apply_only_when_tasks_run_together():
    one = WillItScaleConfig(test="page_fault2", tasks=1, vcpus=16, memory_bytes_per_s=16 << 30,
                            fault_contention=0.5)  # fmt: skip
    assert one.effective().cow_fault_ns == one.cow_fault_ns
    assert one.effective().copy_bytes_per_s == one.copy_bytes_per_s  # 8 GiB/s < 16 GiB/s
    four = WillItScaleConfig(test="page_fault2", tasks=4, vcpus=16, memory_bytes_per_s=16 << 30,
                             fault_contention=0.5)  # fmt: skip
    eff = four.effective()
    assert eff.cow_fault_ns == round(four.cow_fault_ns * 2.5)
    assert eff.copy_bytes_per_s == 4 << 30  # 16 GiB/s shared by four
    # more tasks than vCPUs: only one per vCPU runs at once
    assert WillItScaleConfig(test="page_fault2", tasks=8, vcpus=2, fault_contention=1.0).effective().cow_fault_ns == 2 * four.cow_fault_ns  # fmt: skip
    assert WillItScaleConfig(test="page_fault2").effective() == WillItScaleConfig(
        test="page_fault2"
    )


def test_published_host_memory_measurements_are_within_their_tolerances():
    """docs/validation.md §2: the Firecracker points within 64 MiB, mvm's first GiB within
    25 % of 10.9 s, an idle guest's free memory reported in 15-45 s."""
    from services.sim.validation import firecracker, idle_drain, mvm

    fc = firecracker()
    assert all(p["ok"] for p in fc["points"]), fc["points"]
    assert fc["points"][0]["sim_mib"] == pytest.approx(988, abs=1)  # before the free
    m = mvm()
    assert m["ok"] and m["before_mib"] == pytest.approx(1610, abs=1)
    (d,) = idle_drain((4,))
    assert d["ok"]


def test_a_failing_cell_is_one_the_document_explains():
    """Cells outside their tolerance must be listed with a reason (make validate fails on
    any other); the reasons name real cells."""
    from services.sim.validation import CONFIGS, EXPLAINED

    for bench, tasks, config in EXPLAINED:
        assert (bench, tasks) in COVER_LETTER and config in CONFIGS
    assert all(len(why) > 40 and -100 < was < 100 for why, was in EXPLAINED.values())


def _cell(config, sim, real, tasks=1, bench=PF1, stdev=0.1):
    from services.sim.validation import Cell

    c = Cell(bench, tasks, config, sim=sim, real=real, stdev=stdev, start_s=0.0)
    c.delta_sim, c.delta_real, c.tolerance = sim, real, 1.0
    return c


def test_scores_orderings_and_drift_read_the_cells():
    """The summary's checks (pure): predicted cells only, a null model beside the
    simulator, the THP orderings, and an explained cell leaving its band."""
    from services.sim.validation import explained_drift, orderings, scores

    cells = []
    for tasks in (1, 16):
        for cfg, sim, real in (
            ("baseline", 0, 0), ("applied", 0, -0.1), ("enabled", -0.4, -0.6),
            ("shuffle", -6.0, -3.0), ("shuffle_rfc", -0.7, -1.2),
        ):  # fmt: skip
            cells.append(_cell(cfg, sim, real, tasks))
    sc = scores(cells)
    assert sc["predicted"] == 6 and sc["simulator"] == 4  # both shuffles miss by 3 pp
    assert sc["null_model"] == 2  # only enabled is within 1 pp of 0 in the letter
    assert all(letter and sim for _, letter, sim in orderings(cells))
    cells[3].delta_sim = -0.5  # shuffle no worse than reporting alone: the ordering fails
    assert [sim for _, _, sim in orderings(cells)][:2] == [False, False]
    moved = _cell("shuffle", -11.0, -2.9)
    assert explained_drift([moved]) and not explained_drift([_cell("shuffle", -13.0, -2.9)])
