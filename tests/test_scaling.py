"""The service's scaling (terraform/autoscaling.tf, capacity.tf): the structure that scale-in after
silence, no overshoot and spare capacity rest on, and the model (objdetect_tools.scaling) that plays
a burst and silence through the policy terraform configures, next to one that never scales in."""

from __future__ import annotations

import io
import math
import re
from contextlib import redirect_stdout
from dataclasses import replace
from functools import lru_cache

import pytest

from objdetect_tools import scaling
from objdetect_tools.scaling import (TERRAFORM_DIR, Latencies, Trace, one, parse, per_target_policy,
                                     policy_from_terraform, simulate)

pytestmark = pytest.mark.unit

LARGER = {"max_tasks": 8, "instance_max_count": 9}  # room to overshoot
NEEDS_FOUR = Trace(peak=2300)  # ceil(2300 / 600) = 4 tasks


@lru_cache(maxsize=1)
def configuration_files() -> tuple[dict, ...]:
    return tuple(parse(path.read_text()) for path in sorted(TERRAFORM_DIR.glob("*.tf")))


def resources(type_: str) -> dict:
    return {name: body for parsed in configuration_files() for name, body in scaling.resources(parsed, type_).items()}


def variable_blocks() -> dict:
    return {name: body for parsed in configuration_files() for block in parsed.get("variable", [])
            for name, body in block.items()}


def policy_configuration() -> dict:
    return one(resources("aws_appautoscaling_policy")["requests_per_task"]["target_tracking_scaling_policy_configuration"])


def queries() -> dict:
    return {query["id"]: query for query in one(policy_configuration()["customized_metric_specification"])["metrics"]}


def readme_section() -> str:
    readme = (TERRAFORM_DIR / "README.md").read_text()
    return readme.split("## Scaling and its cost", 1)[1].split("\n## ", 1)[0]


def readme_minutes_to_min_tasks() -> int:
    match = re.search(r"back to `min_tasks` within (\d+) minutes of the last request", readme_section())
    assert match, "README \"Scaling and its cost\" must say within how many minutes the service is back to min_tasks"
    return int(match.group(1))


# --- the configuration ------------------------------------------------------------------------------

def test_the_policy_tracks_every_target_groups_requests_filled_with_zero_per_desired_task():
    configuration = policy_configuration()
    assert "predefined_metric_specification" not in configuration  # no data without requests: never scales in
    assert configuration["target_value"] == "${var.requests_per_task_target}"
    found = queries()
    request_groups = {}
    for id_, query in found.items():
        if "metric_stat" not in query:
            continue
        stat = one(query["metric_stat"])
        metric = one(stat["metric"])
        dimensions = {d["name"]: d["value"] for d in metric["dimensions"]}
        if metric["metric_name"] == "RequestCount":
            assert (metric["namespace"], stat["stat"]) == ("AWS/ApplicationELB", "Sum"), id_
            assert dimensions["LoadBalancer"] == "${aws_lb.this.arn_suffix}", id_
            request_groups[id_] = dimensions["TargetGroup"]
        else:
            assert (metric["namespace"], metric["metric_name"], stat["stat"]) == \
                ("ECS/ContainerInsights", "DesiredTaskCount", "Average"), id_
            assert dimensions == {"ClusterName": "${aws_ecs_cluster.this.name}",
                                  "ServiceName": "${aws_ecs_service.this.name}"}
            tasks = id_
        assert query["return_data"] is False, id_
    # Every target group the load balancer has: production may be in either after a release.
    assert sorted(request_groups.values()) == sorted(f"${{aws_lb_target_group.{name}.arn_suffix}}"
                                                     for name in resources("aws_lb_target_group"))
    returned = [query for query in found.values() if query.get("return_data") is True]
    assert len(returned) == 1
    expression = returned[0]["expression"]
    for id_ in request_groups:
        assert re.search(rf"FILL\({id_}, 0\)", expression), f"{id_} is not FILLed with 0: {expression}"
    assert re.fullmatch(rf"\(.*\) / {tasks}", expression), expression
    assert resources("aws_ecs_cluster")["this"]["setting"] == [{"name": "containerInsights", "value": "enabled"}]


def test_cooldowns_outlast_the_metrics_delay_and_scale_in_is_slower():
    configuration = policy_configuration()
    assert configuration["scale_out_cooldown"] == "${var.scale_out_cooldown_seconds}"
    assert configuration["scale_in_cooldown"] == "${var.scale_in_cooldown_seconds}"
    assert "disable_scale_in" not in configuration
    variables = variable_blocks()
    out, in_ = variables["scale_out_cooldown_seconds"]["default"], variables["scale_in_cooldown_seconds"]["default"]
    # The model overshoots below (delay + 1) minutes (test_the_cooldown_is_what_keeps_a_scale_out_from_overshooting);
    # the default leaves room for 3 more minutes of delay.
    assert out >= 60 * (Latencies().metric + 1) + 180
    assert in_ >= out


def test_spare_capacity_is_a_warm_pool_of_stopped_instances_and_a_target_capacity_variable():
    group = resources("aws_autoscaling_group")["gpu"]
    warm = one([block["warm_pool"] for block in group.get("dynamic", []) if "warm_pool" in block])
    assert warm["for_each"] == "${var.warm_pool ? [1] : []}"
    content = one(warm["content"])
    assert content["pool_state"] == "Stopped"
    assert "instance_reuse_policy" not in content  # ECS does not allow reuse on scale-in
    assert "max_group_prepared_capacity" not in content  # the pool: instance_max_count less the running ones
    assert group["max_size"] == "${var.instance_max_count}"
    assert group["force_delete_warm_pool"] is True  # terraform destroy does not wait for the pool
    user_data = resources("aws_launch_template")["gpu"]["user_data"]
    assert "ECS_WARM_POOLS_CHECK=true" in user_data  # the agent stays out of the cluster while pooled
    scaling_block = one(one(resources("aws_ecs_capacity_provider")["gpu"]["auto_scaling_group_provider"])["managed_scaling"])
    assert scaling_block["target_capacity"] == "${var.target_capacity_percent}"
    variables = variable_blocks()
    assert variables["warm_pool"]["default"] is True
    assert variables["target_capacity_percent"]["default"] == 100


def test_min_tasks_defaults_to_two_in_two_zones_within_the_instances_bounds():
    variables = variable_blocks()
    assert variables["min_tasks"]["default"] == 2
    assert variables["min_tasks"]["default"] <= variables["max_tasks"]["default"]
    assert 2 * variables["max_tasks"]["default"] <= variables["instance_max_count"]["default"]  # a release doubles them
    condition = one(variables["max_tasks"]["validation"])["condition"]
    assert "var.max_tasks >= var.min_tasks" in condition and "var.max_tasks * 2 <= var.instance_max_count" in condition
    precondition = one(one(resources("aws_appautoscaling_target")["service"]["lifecycle"])["precondition"])
    assert "var.min_tasks < 2" in precondition["condition"]
    assert "data.aws_subnet.private : subnet.availability_zone" in precondition["condition"]
    spread = one(resources("aws_ecs_service")["this"]["ordered_placement_strategy"])
    assert spread == {"type": "spread", "field": "attribute:ecs.availability-zone"}


# --- the model ----------------------------------------------------------------------------------------

def test_the_model_reads_the_policy_from_terraform():
    policy = policy_from_terraform()
    variables = variable_blocks()
    assert (policy.min_tasks, policy.max_tasks, policy.target) == (
        variables["min_tasks"]["default"], variables["max_tasks"]["default"], variables["requests_per_task_target"]["default"])
    assert (policy.scale_out_cooldown_s, policy.scale_in_cooldown_s) == (
        variables["scale_out_cooldown_seconds"]["default"], variables["scale_in_cooldown_seconds"]["default"])
    assert (policy.metric, policy.idle_is_zero) == ("per_desired", True)
    assert (policy.warm_pool, policy.target_capacity, policy.max_step) == (True, 100, 2)
    assert (policy.instance_min, policy.instance_max) == (
        variables["instance_min_count"]["default"], variables["instance_max_count"]["default"])
    changed = policy_from_terraform(overrides={"min_tasks": 1, "warm_pool": False, "target_capacity_percent": 67})
    assert (changed.min_tasks, changed.warm_pool, changed.target_capacity) == (1, False, 67)
    baseline = per_target_policy()
    assert (baseline.metric, baseline.idle_is_zero, baseline.scale_out_cooldown_s) == ("per_target", False, 60)


def test_a_burst_is_served_without_overshoot_and_silence_returns_to_min_tasks_within_the_documented_time():
    documented = readme_minutes_to_min_tasks()
    for policy, trace in ((policy_from_terraform(), Trace()),
                          (policy_from_terraform(overrides=LARGER), NEEDS_FOUR),
                          (policy_from_terraform(overrides=LARGER), replace(NEEDS_FOUR, ramp_minutes=15))):
        run = simulate(policy, trace)
        assert run.needed == min(policy.max_tasks, math.ceil(trace.peak / policy.target))
        assert run.peak_desired == run.needed <= policy.max_tasks, (trace, [m.desired for m in run.minutes])
        assert run.scale_out_served_after is not None and run.scale_out_served_after <= trace.ramp_minutes + 15
        assert run.back_to_min_tasks_after is not None and run.back_to_min_tasks_after <= documented
        assert run.back_to_idle_instances_after is not None
        assert all(m.point == 0 for m in run.minutes[trace.silence_start:])  # FILL: a quiet minute is 0
    assert simulate(policy_from_terraform(), scale_in="one_task").back_to_min_tasks_after <= documented


def test_a_policy_without_fill_never_scales_in_and_the_model_tells_them_apart():
    for baseline in (per_target_policy(), per_target_policy(overrides=LARGER)):
        run = simulate(baseline, NEEDS_FOUR)
        quiet = run.minutes[NEEDS_FOUR.silence_start:]
        assert all(m.point is None for m in quiet)  # INSUFFICIENT_DATA
        assert run.back_to_min_tasks_after is None
        assert all(m.desired == quiet[0].desired > baseline.min_tasks for m in quiet)
    # FILL alone decides it: the configured autoscaling.tf with the FILLs taken out.
    text = (TERRAFORM_DIR / "autoscaling.tf").read_text()
    unfilled = re.sub(r"FILL\((\w+), 0\)", r"\1", text)
    assert unfilled != text
    policy = policy_from_terraform(autoscaling_tf=unfilled)
    assert not policy.idle_is_zero
    assert simulate(policy).back_to_min_tasks_after is None
    assert simulate(policy_from_terraform()).back_to_min_tasks_after is not None


def test_the_cooldown_is_what_keeps_a_scale_out_from_overshooting():
    configured = policy_from_terraform(overrides=LARGER)
    assert simulate(configured, NEEDS_FOUR).peak_desired == 4
    short = replace(configured, scale_out_cooldown_s=60)
    assert simulate(short, NEEDS_FOUR).peak_desired > 4  # scale-outs on points from before the first one
    # Divided by running tasks the metric stays high until new tasks run: the cooldown would have
    # to outlast a GPU task's start, not the metric's delay.
    assert simulate(replace(configured, metric="per_running"), NEEDS_FOUR).peak_desired > 4
    # The per-target policy overshoots to max_tasks.
    assert simulate(per_target_policy(overrides=LARGER), NEEDS_FOUR).peak_desired == LARGER["max_tasks"]


def test_spare_capacity_serves_a_burst_sooner_and_the_readme_quotes_its_cost():
    policy = policy_from_terraform()
    served = {label: simulate(replace(policy, **settings)).scale_out_served_after
              for label, settings in scaling.SPARE_OPTIONS}
    none, warm, running = served.values()
    assert running < warm < none
    cost = scaling.costs(policy)
    assert round(cost.running_instance, 2) == round(730 * 0.526, 2) == 383.98
    assert cost.volume == 100 * 0.08 == 8.0
    assert round(cost.idle_fleet, 2) == 2 * 391.98
    stopped = variable_blocks()["instance_max_count"]["default"] - 2  # what the group may add beyond the idle fleet
    assert stopped == 4 and cost.warm_pool_idle == stopped * 8.0
    section = readme_section()
    for number in ("730 h x 0.526 USD = 383.98", "100 x 0.08 USD = 8.00", "783.96", "815.96", "1,175.94",
                   f"| {none} min |", f"| {warm} min |", f"| {running} min |"):
        assert number in section, number


def test_the_script_prints_the_table_the_summary_and_the_costs():
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert scaling.main([]) == 0
    output = printed.getvalue()
    run = simulate(policy_from_terraform())
    assert re.search(r"^minute  requests/min  point  desired  running  serving  instances  warm$", output, re.M)
    assert len(re.findall(r"^\s+\d+\s+\d+\s+", output, re.M)) == len(Trace().requests())
    assert f"back to min_tasks (2): {run.back_to_min_tasks_after} min after the last request" in output
    assert "ALBRequestCountPerTarget: peak tasks 8, needed 4" in output
    assert "a running instance: 730 h x 0.526 = 383.98" in output


def test_the_model_refuses_a_metric_it_does_not_model():
    text = (TERRAFORM_DIR / "autoscaling.tf").read_text()
    with pytest.raises(ValueError, match="not modelled"):
        policy_from_terraform(autoscaling_tf=text.replace(") / tasks", ") * tasks"))
