"""`python scripts/scaling.py`: the service's scaling policy played minute by minute through a
traffic trace (a burst, then silence), with its numbers read from terraform/ (the variables'
defaults, autoscaling.tf, capacity.tf), so that terraform/README.md "Scaling and its cost" quotes
what the configuration does rather than a guess.

What is modelled, and on what it rests:

- Target tracking (Application Auto Scaling) creates two alarms on the policy's metric: AlarmHigh,
  3 of 3 one-minute points above the target; AlarmLow, 15 of 15 points below the scale-in threshold
  (about 10% under the target; AWS sets both alarms and does not let them be changed). An alarm
  whose points are all missing is INSUFFICIENT_DATA, and target tracking does not scale in on it.
  Scaling actions repeat every minute while an alarm stays in ALARM. New capacity =
  ceil(capacity x metric / target); within the scale-out cooldown the capacity before that
  scale-out is the basis and what it added counts as done ("calculated as part of the desired
  capacity for the next scale-out": the reading under which the cooldown holds anything back),
  afterwards the desired count; a scale-in waits for the scale-in cooldown.
- The metric is what autoscaling.tf specifies: the predefined ALBRequestCountPerTarget (requests per
  healthy target; the load balancer reports nothing in a minute without requests), or metric math
  of the target groups' RequestCount, FILLed with 0 (or not), divided by the service's
  DesiredTaskCount or RunningTaskCount. Points reach the alarms METRIC_LAG minutes late.
- The capacity provider keeps ceil(tasks x 100 / target_capacity) instances (one GPU, one task
  each) within the group's bounds: it adds at most maximum_scaling_step_size instances a minute,
  a minute after tasks wait; it removes empty instances after 15 minutes of surplus. A warm pool
  holds every instance the group may still add, stopped; a replaced one initializes again.
- A task on a fresh instance waits for it to boot and join, pulls the image (unless that instance
  pulled it before), then loads the model; Latencies holds these durations. They are assumptions
  (no AWS account was reachable where this was written), stated so that they can be replaced by
  measured ones.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import hcl2

from objdetect_serving.paths import ROOT

TERRAFORM_DIR = ROOT / "terraform"

# Target tracking's alarms (AWS creates them; not configurable), and the capacity provider's scale-in alarm.
HIGH_POINTS = 3
LOW_POINTS = 15
LOW_THRESHOLD = 0.9  # AlarmLow's threshold as a fraction of the target ("usually more than 10% lower")
CAPACITY_PROVIDER_LOW_POINTS = 15
DEFAULT_COOLDOWN_S = 300  # Application Auto Scaling's default for ECS services

HOURS_PER_MONTH = 730
ON_DEMAND_USD_PER_HOUR = {"g4dn.xlarge": 0.526}  # us-east-1, Linux, on demand
GP3_USD_PER_GB_MONTH = 0.08  # us-east-1; a stopped instance pays for its volumes only


@dataclass(frozen=True)
class Latencies:
    """Minutes, assumed (see the module's docstring): what a new task waits for."""
    metric: int = 1  # a minute's point reaches CloudWatch's alarms a minute later
    capacity_provider: int = 1  # CapacityProviderReservation's point, then its alarm (1 of 1) launches
    cold_instance: int = 3  # launch a g4dn.xlarge, boot, GPU driver, the ECS agent registers
    warm_instance: int = 2  # start a stopped warm-pool instance, the ECS agent registers
    image_pull: int = 3  # the 2.8 GB (compressed) CUDA image, extracted onto gp3 (125 MB/s)
    model_load: int = 2  # the release's archives from S3, TorchServe, the model READY on the GPU
    task_stop: int = 2  # deregistration delay (75 s), the entrypoint's drain, the stop


@dataclass(frozen=True)
class Policy:
    """The numbers the model plays, as terraform/ sets them (policy_from_terraform)."""
    min_tasks: int
    max_tasks: int
    target: float  # requests per task per minute
    scale_out_cooldown_s: int
    scale_in_cooldown_s: int
    metric: str  # "per_target" (ALBRequestCountPerTarget), "per_desired" or "per_running" (metric math)
    idle_is_zero: bool  # a minute without requests is a point of 0 (FILL), not a missing point
    target_capacity: int  # the capacity provider's, in percent
    max_step: int  # the capacity provider's maximum_scaling_step_size
    warm_pool: bool
    instance_min: int
    instance_max: int
    instance_type: str
    root_volume_gb: int


# --- reading terraform/ ------------------------------------------------------------------------------

def parse(text: str) -> dict:
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
    return hcl2.loads(text, serialization_options=options)


def variables(parsed: dict) -> dict:
    return {name: body.get("default") for block in parsed.get("variable", []) for name, body in block.items()}


def resources(parsed: dict, type_: str) -> dict:
    return {name: body for block in parsed.get("resource", []) for name, body in block.get(type_, {}).items()}


def one(value):
    assert isinstance(value, list) and len(value) == 1, value
    return value[0]


def resolve(value, values: dict):
    """A literal, or "${var.NAME}" resolved from `values`; anything else is not modelled."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{var\.(\w+)\}", value)
        if match:
            if values.get(match.group(1)) is None:
                raise ValueError(f"var.{match.group(1)} has no value (no default and no override)")
            return values[match.group(1)]
        if re.fullmatch(r"-?\d+(\.\d+)?", value):
            return float(value) if "." in value else int(value)
        raise ValueError(f"not a literal or a variable: {value!r}")
    return value


def metric_of(configuration: dict) -> tuple[str, bool]:
    """What the policy tracks: ("per_target" | "per_desired" | "per_running", whether a quiet minute is 0)."""
    if "predefined_metric_specification" in configuration:
        predefined = one(configuration["predefined_metric_specification"])
        if predefined["predefined_metric_type"] != "ALBRequestCountPerTarget":
            raise ValueError(f"not modelled: {predefined['predefined_metric_type']}")
        return "per_target", False  # the load balancer reports no point in a minute without requests
    queries = one(configuration["customized_metric_specification"])["metrics"]
    named = {query["id"]: one(one(query["metric_stat"])["metric"])["metric_name"]
             for query in queries if "metric_stat" in query}
    returned = [query for query in queries if query.get("return_data") is True]
    if len(returned) != 1 or "expression" not in returned[0]:
        raise ValueError("the customized metric must return exactly one expression")
    expression = returned[0]["expression"]
    requests = [id_ for id_, name in named.items() if name == "RequestCount"]
    tasks = [id_ for id_, name in named.items() if name in ("DesiredTaskCount", "RunningTaskCount")]
    if not requests or len(tasks) != 1 or any(not re.search(rf"\b{id_}\b", expression) for id_ in requests) \
            or not re.search(rf"/\s*{tasks[0]}\s*$", expression):
        raise ValueError(f"not modelled: {expression!r} (requests of every target group / one task count)")
    filled = all(re.search(rf"FILL\(\s*{id_}\s*,\s*0\s*\)", expression) for id_ in requests)
    return ("per_desired" if named[tasks[0]] == "DesiredTaskCount" else "per_running"), filled


def warm_pool_of(group: dict, values: dict) -> bool:
    if "warm_pool" in group:
        return True
    for dynamic in group.get("dynamic", []):
        if "warm_pool" in dynamic:
            match = re.fullmatch(r"\$\{var\.(\w+) \? \[1\] : \[\]\}", dynamic["warm_pool"]["for_each"])
            if not match:
                raise ValueError(f"not modelled: warm_pool for_each {dynamic['warm_pool']['for_each']!r}")
            return bool(values[match.group(1)])
    return False


def policy_from_terraform(directory: Path = TERRAFORM_DIR, overrides: dict | None = None,
                          autoscaling_tf: str | None = None) -> Policy:
    """The policy as `directory` configures it: variables.tf's defaults (then `overrides`),
    autoscaling.tf (or the text `autoscaling_tf` in its place) and capacity.tf."""
    values = {**variables(parse((directory / "variables.tf").read_text())), **(overrides or {})}
    autoscaling = parse(autoscaling_tf if autoscaling_tf is not None else (directory / "autoscaling.tf").read_text())
    capacity = parse((directory / "capacity.tf").read_text())
    target = one(list(resources(autoscaling, "aws_appautoscaling_target").values()))
    configuration = one(one(list(resources(autoscaling, "aws_appautoscaling_policy").values()))
                        ["target_tracking_scaling_policy_configuration"])
    metric, idle_is_zero = metric_of(configuration)
    group = resources(capacity, "aws_autoscaling_group")["gpu"]
    scaling = one(one(resources(capacity, "aws_ecs_capacity_provider")["gpu"]["auto_scaling_group_provider"])
                  ["managed_scaling"])
    template = resources(capacity, "aws_launch_template")["gpu"]
    return Policy(
        min_tasks=resolve(target["min_capacity"], values), max_tasks=resolve(target["max_capacity"], values),
        target=resolve(configuration["target_value"], values),
        scale_out_cooldown_s=resolve(configuration.get("scale_out_cooldown", DEFAULT_COOLDOWN_S), values),
        scale_in_cooldown_s=resolve(configuration.get("scale_in_cooldown", DEFAULT_COOLDOWN_S), values),
        metric=metric, idle_is_zero=idle_is_zero,
        target_capacity=resolve(scaling.get("target_capacity", 100), values),
        max_step=resolve(scaling.get("maximum_scaling_step_size", 10000), values),
        warm_pool=warm_pool_of(group, values),
        instance_min=resolve(group["min_size"], values), instance_max=resolve(group["max_size"], values),
        instance_type=resolve(template["instance_type"], values),
        root_volume_gb=resolve(one(one(template["block_device_mappings"])["ebs"])["volume_size"], values))


# The service's policy when it tracks ALBRequestCountPerTarget of one target group, scales out again
# after 60 s, and keeps no spare instance: the comparison the summary prints, and the tests' proof
# that the model tells a policy that never scales in from one that does.
PER_TARGET_POLICY_TF = """
resource "aws_appautoscaling_target" "service" {
  min_capacity = var.min_tasks
  max_capacity = var.max_tasks
}

resource "aws_appautoscaling_policy" "requests_per_task" {
  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_task_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.this.arn_suffix}/${aws_lb_target_group.this.arn_suffix}"
    }
  }
}
"""


def per_target_policy(directory: Path = TERRAFORM_DIR, overrides: dict | None = None) -> Policy:
    policy = policy_from_terraform(directory, overrides, autoscaling_tf=PER_TARGET_POLICY_TF)
    return replace(policy, target_capacity=100, warm_pool=False)


# --- the trace and the simulation ----------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """Requests per minute: `base` for `base_minutes`, then `peak` for `peak_minutes` (reached in a
    straight line over the first `ramp_minutes` of them), then nothing."""
    base: int = 300
    base_minutes: int = 20
    peak: int = 1700
    peak_minutes: int = 60
    silence_minutes: int = 90
    ramp_minutes: int = 0

    @property
    def burst_start(self) -> int:
        return self.base_minutes

    @property
    def silence_start(self) -> int:
        return self.base_minutes + self.peak_minutes

    def requests(self) -> list[int]:
        ramp = [round(self.base + (self.peak - self.base) * (minute + 1) / (self.ramp_minutes + 1))
                for minute in range(min(self.ramp_minutes, self.peak_minutes))]
        return ([self.base] * self.base_minutes + ramp + [self.peak] * (self.peak_minutes - len(ramp))
                + [0] * self.silence_minutes)


@dataclass
class Instance:
    ready_at: int  # the minute it has joined the cluster
    task: Task | None = None
    image_cached: bool = False


@dataclass
class Task:
    state: str = "provisioning"  # provisioning, pulling, loading (RUNNING, model not READY), serving, stopping
    until: int = 0  # when a timed state (pulling, loading, stopping) ends
    instance: Instance | None = None


@dataclass
class Minute:
    minute: int
    requests: int
    point: float | None  # the policy's metric for this minute (None: no data point)
    desired: int
    running: int  # RUNNING tasks: loading the model, serving, or draining before they stop
    serving: int
    instances: int  # in the group: booting or joined
    warm: int  # stopped in the warm pool, ready


@dataclass
class Run:
    policy: Policy
    trace: Trace
    minutes: list[Minute] = field(default_factory=list)

    @property
    def needed(self) -> int:
        return min(self.policy.max_tasks, max(self.policy.min_tasks, math.ceil(self.trace.peak / self.policy.target)))

    @property
    def peak_desired(self) -> int:
        return max(m.desired for m in self.minutes)

    @property
    def scale_out_served_after(self) -> int | None:
        """Minutes from the burst's first minute until as many tasks serve as it needs."""
        for m in self.minutes[self.trace.burst_start:self.trace.silence_start]:
            if m.serving >= self.needed:
                return m.minute - self.trace.burst_start
        return None

    @property
    def back_to_min_tasks_after(self) -> int | None:
        """Minutes from the last request until the service runs min_tasks again (and stays there)."""
        quiet = self.minutes[self.trace.silence_start:]
        for index, m in enumerate(quiet):
            if all(later.desired == self.policy.min_tasks and later.running == self.policy.min_tasks
                   for later in quiet[index:]):
                return m.minute - self.trace.silence_start
        return None

    @property
    def back_to_idle_instances_after(self) -> int | None:
        idle = idle_instances(self.policy)
        quiet = self.minutes[self.trace.silence_start:]
        for index, m in enumerate(quiet):
            if all(later.instances == idle for later in quiet[index:]):
                return m.minute - self.trace.silence_start
        return None


def idle_instances(policy: Policy) -> int:
    return min(policy.instance_max, max(policy.instance_min, math.ceil(policy.min_tasks * 100 / policy.target_capacity)))


def simulate(policy: Policy, trace: Trace = Trace(), latencies: Latencies = Latencies(),
             scale_in: str = "proportional") -> Run:
    """Plays `trace` through `policy`, a minute at a time, from a steady state at min_tasks.
    scale_in "one_task" removes one task per scale-in instead of what the metric says: the slowest
    AWS could be ("scales in more gradually"), for a bound."""
    run = Run(policy, trace)
    out_cooldown = math.ceil(policy.scale_out_cooldown_s / 60)
    in_cooldown = math.ceil(policy.scale_in_cooldown_s / 60)
    group = [Instance(ready_at=0) for _ in range(idle_instances(policy))]
    tasks = []
    for instance in group[:policy.min_tasks]:
        task = Task(state="serving", instance=instance)
        instance.task, instance.image_cached = task, True
        tasks.append(task)
    warm_ready = policy.instance_max - len(group) if policy.warm_pool else 0
    warm_initializing: list[int] = []  # minutes at which a new warm-pool instance is initialized
    desired = policy.min_tasks
    out_until = in_until = -1
    out_basis = desired
    points: list[float | None] = []
    demand: list[int] = []
    surplus = 0

    for t, requests in enumerate(trace.requests()):
        # What finished by the start of minute t.
        for task in list(tasks):
            if task.state in ("pulling", "loading", "stopping") and task.until <= t:
                if task.state == "pulling":
                    task.state, task.until = "loading", t + latencies.model_load
                    task.instance.image_cached = True
                elif task.state == "loading":
                    task.state = "serving"
                else:
                    task.instance.task = None
                    tasks.remove(task)
        warm_ready += sum(1 for ready in warm_initializing if ready <= t)
        warm_initializing = [ready for ready in warm_initializing if ready > t]

        running = sum(task.state in ("loading", "serving", "stopping") for task in tasks)  # ECS: RUNNING
        serving = sum(task.state == "serving" for task in tasks)

        # This minute's point of the policy's metric.
        if requests == 0 and not policy.idle_is_zero:
            point = None
        else:
            divisor = {"per_target": serving, "per_desired": desired, "per_running": running}[policy.metric]
            point = requests / divisor if divisor else None  # CloudWatch drops a division by zero
        points.append(point)
        run.minutes.append(Minute(t, requests, point, desired, running, serving, len(group), warm_ready))

        # The alarms, on the points that have arrived.
        seen = points[:max(0, t + 1 - latencies.metric)]
        high, low = seen[-HIGH_POINTS:], seen[-LOW_POINTS:]
        high_alarm = len(high) == HIGH_POINTS and all(p is not None and p > policy.target for p in high)
        low_alarm = len(low) == LOW_POINTS and all(p is not None and p < LOW_THRESHOLD * policy.target for p in low)
        latest = seen[-1] if seen else None
        if high_alarm:
            in_cooldown_now = t < out_until
            basis = out_basis if in_cooldown_now else desired
            proposal = min(policy.max_tasks, math.ceil(basis * latest / policy.target - 1e-9))
            if proposal > desired:
                if not in_cooldown_now:
                    out_basis = desired
                desired, out_until, in_until = proposal, t + out_cooldown, t
        elif low_alarm and t >= in_until:
            proposal = max(policy.min_tasks, math.ceil(desired * latest / policy.target - 1e-9))
            if scale_in == "one_task":
                proposal = max(proposal, desired - 1)
            if proposal < desired:
                desired, in_until = proposal, t + in_cooldown

        # The service: start or stop tasks for the desired count.
        active = [task for task in tasks if task.state != "stopping"]
        for _ in range(desired - len(active)):
            tasks.append(Task())
        order = {"provisioning": 0, "pulling": 1, "loading": 2, "serving": 3}
        for task in sorted(active, key=lambda task: order[task.state])[:max(0, len(active) - desired)]:
            if task.state == "provisioning":
                tasks.remove(task)
            else:
                task.state, task.until = "stopping", t + 1 + latencies.task_stop

        # Placement: one task per joined, empty instance.
        free = [instance for instance in group if instance.task is None and instance.ready_at <= t + 1]
        for task in [task for task in tasks if task.state == "provisioning"]:
            if not free:
                break
            instance = free.pop(0)
            instance.task, task.instance = task, instance
            task.state, task.until = "pulling", t + 1 + (0 if instance.image_cached else latencies.image_pull)

        # The capacity provider, on the demand its metric saw.
        demand.append(len(tasks))
        seen_demand = demand[max(0, t - latencies.capacity_provider)]
        wanted = min(policy.instance_max, max(policy.instance_min, math.ceil(seen_demand * 100 / policy.target_capacity)))
        if wanted > len(group):
            surplus = 0
            for _ in range(min(policy.max_step, wanted - len(group))):
                if warm_ready:
                    warm_ready -= 1
                    group.append(Instance(ready_at=t + 1 + latencies.warm_instance))
                else:
                    group.append(Instance(ready_at=t + 1 + latencies.cold_instance))
        elif wanted < len(group):
            surplus += 1
            if surplus >= CAPACITY_PROVIDER_LOW_POINTS:
                for instance in [instance for instance in group if instance.task is None][:len(group) - wanted]:
                    group.remove(instance)
                    if policy.warm_pool:  # the pool tops up to what the group may still add
                        warm_initializing.append(t + 1 + latencies.cold_instance)
        else:
            surplus = 0
    return run


# --- cost ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Costs:
    """USD per month, on-demand us-east-1 prices (check current ones)."""
    instance_hour: float
    running_instance: float  # 730 h of the instance
    volume: float  # its root volume, running or stopped
    idle_fleet: float  # min_tasks' instances (and any spare), running, with their volumes
    warm_pool_idle: float  # the warm pool's stopped instances while the fleet idles
    spare_instances_idle: int


def costs(policy: Policy, instance_hour: float | None = None) -> Costs:
    hourly = instance_hour if instance_hour is not None else ON_DEMAND_USD_PER_HOUR.get(policy.instance_type)
    if hourly is None:
        raise ValueError(f"no price for {policy.instance_type}: pass --instance-hour-usd")
    running = HOURS_PER_MONTH * hourly
    volume = GP3_USD_PER_GB_MONTH * policy.root_volume_gb
    idle = idle_instances(policy)
    warm = (policy.instance_max - idle) * volume if policy.warm_pool else 0.0
    return Costs(hourly, running, volume, idle * (running + volume), warm, idle - policy.min_tasks)


# --- the report ---------------------------------------------------------------------------------------

def describe(policy: Policy) -> str:
    metric = {"per_target": "ALBRequestCountPerTarget", "per_desired": "requests / desired tasks",
              "per_running": "requests / running tasks"}[policy.metric]
    return (f"target {policy.target:g} requests/task/min on {metric} "
            f"({'a quiet minute is 0' if policy.idle_is_zero else 'no data point in a quiet minute'}); "
            f"tasks {policy.min_tasks}..{policy.max_tasks}; cooldowns out {policy.scale_out_cooldown_s} s, "
            f"in {policy.scale_in_cooldown_s} s; capacity provider target {policy.target_capacity}%, "
            f"{'warm pool of stopped instances' if policy.warm_pool else 'no warm pool'}; "
            f"instances {policy.instance_min}..{policy.instance_max} {policy.instance_type}")


def table(run: Run) -> str:
    lines = ["minute  requests/min  point  desired  running  serving  instances  warm"]
    for m in run.minutes:
        point = "-" if m.point is None else f"{m.point:.0f}"
        lines.append(f"{m.minute:6d}  {m.requests:12d}  {point:>5}  {m.desired:7d}  {m.running:7d}  "
                     f"{m.serving:7d}  {m.instances:9d}  {m.warm:4d}")
    return "\n".join(lines)


def after(value: int | None, event: str) -> str:
    return "never, within the trace" if value is None else f"{value} min after {event}"


def summary(run: Run) -> str:
    return "\n".join([
        f"  peak tasks {run.peak_desired}, needed {run.needed} "
        f"(ceil({run.trace.peak} / {run.policy.target:g}), max_tasks {run.policy.max_tasks})",
        f"  as many tasks serving as the burst needs: {after(run.scale_out_served_after, 'it began')}",
        f"  back to min_tasks ({run.policy.min_tasks}): {after(run.back_to_min_tasks_after, 'the last request')}",
        f"  instances back to {idle_instances(run.policy)}: {after(run.back_to_idle_instances_after, 'the last request')}",
    ])


SPARE_OPTIONS = (("none", {"warm_pool": False, "target_capacity": 100}),
                 ("warm pool (stopped instances)", {"warm_pool": True, "target_capacity": 100}),
                 ("one running spare (target_capacity_percent = 67)", {"warm_pool": False, "target_capacity": 67}))


def spare_options(policy: Policy, trace: Trace, latencies: Latencies, instance_hour: float | None) -> str:
    rows = ["| spare capacity | instances running at idle | USD/month at idle | burst served after |",
            "|---|---:|---:|---:|"]
    for label, settings in SPARE_OPTIONS:
        option = replace(policy, **settings)
        cost = costs(option, instance_hour)
        served = simulate(option, trace, latencies).scale_out_served_after
        rows.append(f"| {label} | {idle_instances(option)} | {cost.idle_fleet + cost.warm_pool_idle:,.2f} | "
                    f"{'never' if served is None else f'{served} min'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--terraform", type=Path, default=TERRAFORM_DIR, help="the configuration to read")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=NUMBER",
                        help="override a variable's default (numbers and true/false)")
    parser.add_argument("--base", type=int, default=Trace.base, help="requests per minute before the burst")
    parser.add_argument("--peak", type=int, default=Trace.peak, help="requests per minute during the burst")
    parser.add_argument("--peak-minutes", type=int, default=Trace.peak_minutes)
    parser.add_argument("--instance-hour-usd", type=float, help="on-demand price of the instance type")
    parser.add_argument("--no-table", action="store_true", help="the summary only")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.var:
        name, _, value = item.partition("=")
        overrides[name] = {"true": True, "false": False}.get(value) if value in ("true", "false") else float(value)
        if isinstance(overrides[name], float) and overrides[name].is_integer():
            overrides[name] = int(overrides[name])
    trace = Trace(base=args.base, peak=args.peak, peak_minutes=args.peak_minutes)
    latencies = Latencies()
    policy = policy_from_terraform(args.terraform, overrides)
    run = simulate(policy, trace, latencies)
    print(f"Configured policy ({args.terraform}): {describe(policy)}")
    print(f"Trace: {trace.base}/min for {trace.base_minutes} min, {trace.peak}/min for {trace.peak_minutes} min, "
          f"then silence for {trace.silence_minutes} min. Assumed latencies (min): {latencies}\n")
    if not args.no_table:
        print(table(run) + "\n")
    print("Summary, configured policy:\n" + summary(run))
    bound = simulate(policy, trace, latencies, scale_in="one_task").back_to_min_tasks_after
    print(f"  if AWS removed one task per scale-in: back to min_tasks {after(bound, 'the last request')}")
    baseline = simulate(per_target_policy(args.terraform, overrides), trace, latencies)
    print("\nSummary, ALBRequestCountPerTarget, 60 s scale-out cooldown, no spare capacity:\n" + summary(baseline))
    larger = {**overrides, "max_tasks": 8, "instance_max_count": 9}
    wide = Trace(base=trace.base, peak=2300, peak_minutes=trace.peak_minutes)
    print(f"\nA larger fleet (max_tasks 8, instance_max_count 9), a burst of {wide.peak}/min:")
    for label, candidate in (("configured", policy_from_terraform(args.terraform, larger)),
                             ("ALBRequestCountPerTarget", per_target_policy(args.terraform, larger))):
        wide_run = simulate(candidate, wide, latencies)
        print(f"  {label}: peak tasks {wide_run.peak_desired}, needed {wide_run.needed}; "
              f"back to min_tasks: {after(wide_run.back_to_min_tasks_after, 'the last request')}")
    cost = costs(policy, args.instance_hour_usd)
    print(f"\nCost (USD/month, on demand, {policy.instance_type} at {cost.instance_hour} USD/h, "
          f"gp3 at {GP3_USD_PER_GB_MONTH} USD/GB-month):")
    print(f"  a running instance: {HOURS_PER_MONTH} h x {cost.instance_hour} = {cost.running_instance:,.2f}, "
          f"plus its {policy.root_volume_gb} GB volume, {cost.volume:,.2f}")
    print(f"  a stopped warm-pool instance: {policy.root_volume_gb} GB x {GP3_USD_PER_GB_MONTH} = {cost.volume:,.2f}")
    print(f"  the idle fleet: {idle_instances(policy)} running = {cost.idle_fleet:,.2f}; the warm pool meanwhile "
          f"({policy.instance_max - idle_instances(policy) if policy.warm_pool else 0} stopped) = {cost.warm_pool_idle:,.2f}")
    stuck = baseline.minutes[-1].instances - idle_instances(policy)
    print(f"  a policy that never scales in keeps {stuck} more instance(s) after this burst: "
          f"{stuck * (cost.running_instance + cost.volume):,.2f} a month until traffic returns")
    print("\nSpare capacity, the same trace:\n" + spare_options(policy, trace, latencies, args.instance_hour_usd))
    return 0
