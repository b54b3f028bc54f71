//! The scaling decision, kept pure: given the metric's datapoints as they arrive, the worker fleet's next
//! desired task count. No clock, no queue: the simulation feeds it, and its tests are tables worked by hand.
//!
//! It mirrors Application Auto Scaling target tracking as `terraform/autoscaling.tf` configures it for the
//! worker service:
//! - scale out when the last [`AutoscaleSettings::scale_out_datapoints`] datapoints are all above the target
//!   (AWS's high alarm: 3 one-minute datapoints), scale in when the last
//!   [`AutoscaleSettings::scale_in_datapoints`] are all below [`SCALE_IN_THRESHOLD`] × the target (AWS's low
//!   alarm: 15 datapoints below 90 % of it);
//! - the new desired count is `ceil(desired × metric ÷ target)`, clamped to the minimum and maximum tasks; the
//!   desired count, not the running count, is the capacity it multiplies (tasks still starting count, as the
//!   ECS service's desired count does);
//! - after a scale-out, no other scale-out for the scale-out cooldown; after a scale-in, no other scale-in for
//!   the scale-in cooldown. The alarm stays in alarm, so a breach that lasts scales again after the cooldown.

use std::time::Duration;

/// Scale in only below this fraction of the target: AWS target tracking's low alarm sits at 90 % of it, so
/// a metric hovering at the target neither adds nor removes tasks.
pub const SCALE_IN_THRESHOLD: f64 = 0.9;

/// The fleet and its scaling, in lab time (a time scale divides every duration). `Default` mirrors the
/// defaults of `terraform/variables.tf` where Terraform has the setting, and AWS's behaviour where it does not.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleSettings {
    /// Consumers (processing slots) per worker task: Terraform's `worker_consumers` (WORKER_CONSUMERS). Each
    /// drains `consumers ÷ payment latency` orders a second, and the backlog target scales with it.
    pub consumers_per_task: usize,
    /// Fewest tasks: Terraform's `worker_min_count`. At least 1, because backlog per task divides by the
    /// running tasks; the fleet starts here (Terraform's `worker_desired_count` defaults to the same 1).
    pub min_tasks: usize,
    /// Most tasks: Terraform's `worker_max_count`. 20 × 10 consumers ÷ 3 s = 66 orders/s, above the 60/s sale.
    pub max_tasks: usize,
    /// The longest an order should wait in the queue: Terraform's `acceptable_latency_seconds`. The backlog
    /// per task target is this × consumers ÷ payment latency ([`backlog_per_task_target`]).
    pub acceptable_latency: Duration,
    /// Wait after a scale-out before the next one: Terraform's `scale_out_cooldown_seconds`.
    pub scale_out_cooldown: Duration,
    /// Wait after a scale-in before the next one: Terraform's `scale_in_cooldown_seconds`.
    pub scale_in_cooldown: Duration,
    /// How often a datapoint is published: SQS and Container Insights publish one a minute (no Terraform
    /// variable; CloudWatch's resolution for these metrics).
    pub metric_period: Duration,
    /// How late a datapoint reaches the policy after its minute ends: CloudWatch shows SQS metrics about a
    /// minute late (no Terraform variable).
    pub metric_delay: Duration,
    /// Consecutive datapoints above the target before a scale-out: 3 in AWS target tracking's high alarm
    /// (not settable in Terraform).
    pub scale_out_datapoints: usize,
    /// Consecutive datapoints below 90 % of the target before a scale-in: 15 in AWS target tracking's low
    /// alarm (not settable in Terraform).
    pub scale_in_datapoints: usize,
    /// From a scale-out to the new task taking orders: about a minute on Fargate (image pull, start, health).
    pub startup_delay: Duration,
    /// The CPU policy's target, percent: 70, AWS's example value for ECS CPU target tracking. Terraform has no
    /// CPU policy: it is here only for contrast.
    pub cpu_target_percent: f64,
    /// After the queue has drained, how long the simulation keeps watching (for the scale-in, and so that
    /// task-minutes count it) unless the fleet is back at its minimum sooner. 20 minutes covers the 15
    /// datapoints of the low alarm, their delay and a task's stop.
    pub after_drain: Duration,
}

impl Default for AutoscaleSettings {
    fn default() -> Self {
        AutoscaleSettings {
            consumers_per_task: 10,
            min_tasks: 1,
            max_tasks: 20,
            acceptable_latency: Duration::from_secs(60),
            scale_out_cooldown: Duration::from_secs(60),
            scale_in_cooldown: Duration::from_secs(300),
            metric_period: Duration::from_secs(60),
            metric_delay: Duration::from_secs(60),
            scale_out_datapoints: 3,
            scale_in_datapoints: 15,
            startup_delay: Duration::from_secs(60),
            cpu_target_percent: 70.0,
            after_drain: Duration::from_secs(20 * 60),
        }
    }
}

impl AutoscaleSettings {
    /// These settings with the watch after the drain as asked, else the quick one for a quick run, else as
    /// they are.
    pub fn with_after_drain(self, asked: Option<Duration>, quick: bool) -> AutoscaleSettings {
        let after_drain = asked.unwrap_or(if quick { self.quick_after_drain() } else { self.after_drain });
        AutoscaleSettings { after_drain, ..self }
    }

    /// The watch after the drain for a quick run: long enough for the datapoints that saw the load to arrive
    /// and for the tasks they ask for to start, not for the scale-in.
    pub fn quick_after_drain(&self) -> Duration {
        self.metric_period + self.metric_delay + self.startup_delay
    }

    /// What makes the simulation meaningless, refused as Terraform's precondition and AWS's limits refuse it.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min_tasks >= 1 && self.min_tasks <= self.max_tasks) {
            return Err(format!(
                "need 1 <= min tasks <= max tasks (backlog per task divides by the running tasks); got {} and {}",
                self.min_tasks, self.max_tasks
            ));
        }
        if self.consumers_per_task == 0 {
            return Err("a task needs at least one consumer".into());
        }
        if self.metric_period.is_zero() {
            return Err("the metric period must be positive".into());
        }
        if self.scale_out_datapoints == 0 || self.scale_in_datapoints == 0 {
            return Err("the alarms need at least one datapoint each".into());
        }
        if !(self.cpu_target_percent > 0.0 && self.cpu_target_percent <= 100.0) {
            return Err(format!("the CPU target must be in (0, 100]; got {}", self.cpu_target_percent));
        }
        if self.acceptable_latency.is_zero() {
            return Err("the acceptable latency must be positive".into());
        }
        Ok(())
    }
}

/// Terraform's `local.worker_backlog_per_task_target`: the orders one task can hold in its backlog and still
/// finish within the acceptable latency, `acceptable_latency_seconds × worker_consumers ÷
/// payment_latency_seconds` (200 with the defaults).
pub fn backlog_per_task_target(settings: &AutoscaleSettings, payment_latency: Duration) -> f64 {
    settings.acceptable_latency.as_secs_f64() * settings.consumers_per_task as f64
        / payment_latency.as_secs_f64()
}

/// Terraform's metric math `visible / tasks`: orders waiting per running task. A fleet never runs fewer than
/// one task (the minimum is at least 1), so a zero count reads as one.
pub fn backlog_per_task(visible: u64, running_tasks: usize) -> f64 {
    visible as f64 / running_tasks.max(1) as f64
}

/// A task's CPU utilization, percent, modelled as its busy consumers over its consumers: the worker's CPU
/// follows its processing, so it reads 100 % only once every slot is taken.
pub fn cpu_percent(busy_consumers: usize, consumers: usize) -> f64 {
    if consumers == 0 { 0.0 } else { 100.0 * busy_consumers.min(consumers) as f64 / consumers as f64 }
}

/// Which metric the fleet scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Target tracking on backlog per task (Terraform's policy): visible orders ÷ running tasks.
    BacklogPerTask,
    /// Target tracking on average CPU utilization, for contrast: it reacts only once tasks are saturated.
    Cpu,
}

impl PolicyKind {
    /// Both, in the order the command runs them.
    pub const ALL: [PolicyKind; 2] = [PolicyKind::BacklogPerTask, PolicyKind::Cpu];

    /// The name used in results, file names and tables.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::BacklogPerTask => "backlog-per-task",
            PolicyKind::Cpu => "cpu",
        }
    }

    /// The metric's target value: orders per task, or percent.
    pub fn target(self, settings: &AutoscaleSettings, payment_latency: Duration) -> f64 {
        match self {
            PolicyKind::BacklogPerTask => backlog_per_task_target(settings, payment_latency),
            PolicyKind::Cpu => settings.cpu_target_percent,
        }
    }
}

/// A change of the desired task count, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// When the datapoint that caused it arrived (lab time since the start).
    pub at: Duration,
    /// That datapoint's value.
    pub metric: f64,
    /// Desired tasks before.
    pub from: usize,
    /// Desired tasks after.
    pub to: usize,
}

/// Target tracking's state: the desired count, the alarms' consecutive breaching datapoints, the cooldowns.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTracking {
    target: f64,
    min_tasks: usize,
    max_tasks: usize,
    scale_out_datapoints: usize,
    scale_in_datapoints: usize,
    scale_out_cooldown: Duration,
    scale_in_cooldown: Duration,
    desired: usize,
    above: usize,
    below: usize,
    last_scale_out: Option<Duration>,
    last_scale_in: Option<Duration>,
}

impl TargetTracking {
    /// A policy tracking `target`, starting at the minimum tasks, with the alarms and cooldowns of `settings`.
    pub fn new(target: f64, settings: &AutoscaleSettings) -> TargetTracking {
        TargetTracking {
            target,
            min_tasks: settings.min_tasks,
            max_tasks: settings.max_tasks,
            scale_out_datapoints: settings.scale_out_datapoints,
            scale_in_datapoints: settings.scale_in_datapoints,
            scale_out_cooldown: settings.scale_out_cooldown,
            scale_in_cooldown: settings.scale_in_cooldown,
            desired: settings.min_tasks,
            above: 0,
            below: 0,
            last_scale_out: None,
            last_scale_in: None,
        }
    }

    /// The tasks the policy wants now.
    pub fn desired(&self) -> usize {
        self.desired
    }

    /// The metric's target value.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// Takes the datapoint `metric` arriving at `at` (lab time since the start, non-decreasing) and returns
    /// the change of the desired count it causes, if any.
    pub fn observe(&mut self, at: Duration, metric: f64) -> Option<Decision> {
        self.above = if metric > self.target { self.above + 1 } else { 0 };
        self.below = if metric < SCALE_IN_THRESHOLD * self.target { self.below + 1 } else { 0 };
        let cooled = |last: Option<Duration>, cooldown: Duration| {
            last.is_none_or(|last| at.saturating_sub(last) >= cooldown)
        };
        let wanted = ((self.desired as f64 * metric / self.target).ceil().max(0.0) as usize)
            .clamp(self.min_tasks, self.max_tasks);
        let from = self.desired;
        if self.above >= self.scale_out_datapoints
            && wanted > from
            && cooled(self.last_scale_out, self.scale_out_cooldown)
        {
            self.last_scale_out = Some(at);
        } else if self.below >= self.scale_in_datapoints
            && wanted < from
            && cooled(self.last_scale_in, self.scale_in_cooldown)
        {
            self.last_scale_in = Some(at);
        } else {
            return None;
        }
        self.desired = wanted;
        Some(Decision { at, metric, from, to: wanted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Feeds one datapoint a minute (the first arriving at minute 1) and returns the desired count after each.
    fn desired_after_each(policy: &mut TargetTracking, metrics: &[f64]) -> Vec<usize> {
        metrics
            .iter()
            .enumerate()
            .map(|(i, &metric)| {
                policy.observe(MINUTE * (i as u32 + 1), metric);
                policy.desired()
            })
            .collect()
    }

    #[test]
    fn the_backlog_target_is_terraforms_formula() {
        let settings = AutoscaleSettings::default();
        // 60 s × 10 consumers ÷ 3 s: the 200 of terraform/autoscaling.tf's worker_backlog_per_task_target.
        assert_eq!(backlog_per_task_target(&settings, Duration::from_secs(3)), 200.0);
        let faster = AutoscaleSettings { acceptable_latency: Duration::from_secs(30), ..settings };
        assert_eq!(backlog_per_task_target(&faster, Duration::from_millis(1500)), 200.0);
        assert_eq!(backlog_per_task(3000, 15), 200.0);
        assert_eq!(backlog_per_task(7, 0), 7.0, "never divides by zero");
        assert_eq!(cpu_percent(7, 10), 70.0);
        assert_eq!(cpu_percent(12, 10), 100.0, "at most every slot");
    }

    /// The hand-computed case: a flash sale's backlog series with the Terraform defaults (target 200 per task,
    /// 1 to 20 tasks, cooldowns 60 s out / 300 s in, alarms of 3 and 15 datapoints).
    #[test]
    fn a_backlog_series_gives_the_hand_computed_task_counts() {
        let settings = AutoscaleSettings::default();
        let target = backlog_per_task_target(&settings, Duration::from_secs(3));
        let mut policy = TargetTracking::new(target, &settings);
        // (visible orders, running tasks) of each minute's datapoint, and the desired tasks after it arrives.
        let mut table: Vec<((u64, usize), usize)> = vec![
            ((3400, 1), 1),   // 3,400 per task > 200: first breaching datapoint of three
            ((3200, 1), 1),   // second
            ((2890, 1), 15),  // third: ceil(1 × 2890 / 200) = ceil(14.45) = 15
            ((2800, 1), 20),  // the 14 new tasks still start: ceil(15 × 2800 / 200) = 210, clamped to 20
            ((3000, 20), 20), // 150 per task < 180 (90 % of 200): first low datapoint
        ];
        // Low datapoints 2 to 14 (100 per task): not yet 15.
        table.extend(std::iter::repeat_n(((2000, 20), 20), 13));
        table.extend([
            ((1860, 20), 10), // the 15th low datapoint, 93 per task: ceil(20 × 93 / 200) = ceil(9.3) = 10
            ((1000, 10), 10), // still low (100 per task), but within the 300 s scale-in cooldown
            ((1900, 10), 10), // 190: neither above 200 nor below 180, both alarms reset
        ]);
        // 15 empty minutes: the 15th of them scales in to the minimum (ceil(10 × 0 / 200) = 0, clamped to 1).
        table.extend(std::iter::repeat_n(((0, 10), 10), 14));
        table.push(((0, 10), 1));
        let metrics: Vec<f64> =
            table.iter().map(|&((visible, running), _)| backlog_per_task(visible, running)).collect();
        let expected: Vec<usize> = table.iter().map(|&(_, desired)| desired).collect();
        assert_eq!(desired_after_each(&mut policy, &metrics), expected);
    }

    #[test]
    fn a_scale_out_cooldown_holds_further_scale_outs() {
        let settings = AutoscaleSettings {
            scale_out_cooldown: Duration::from_secs(180),
            ..AutoscaleSettings::default()
        };
        let mut policy = TargetTracking::new(200.0, &settings);
        // Three breaching minutes scale 1 → 3; minutes 4 and 5 fall in the 180 s cooldown; minute 6 scales on
        // the capacity already added: ceil(3 × 400 / 200) = 6.
        let desired = desired_after_each(&mut policy, &[500.0, 500.0, 500.0, 400.0, 400.0, 400.0]);
        assert_eq!(desired, [1, 1, 3, 3, 3, 6]);
    }

    #[test]
    fn cpu_tracking_grows_by_at_most_100_over_70_a_step() {
        let settings = AutoscaleSettings::default();
        let mut policy =
            TargetTracking::new(PolicyKind::Cpu.target(&settings, Duration::from_secs(3)), &settings);
        // Saturated tasks read 100 %: ceil(n × 100 / 70) each minute once the high alarm fires, then 75 % at 20
        // tasks (the maximum) changes nothing.
        let desired =
            desired_after_each(&mut policy, &[100.0; 9].iter().copied().chain([75.0]).collect::<Vec<_>>());
        assert_eq!(desired, [1, 1, 2, 3, 5, 8, 12, 18, 20, 20]);
    }

    #[test]
    fn settings_are_checked_as_terraform_does() {
        assert!(AutoscaleSettings::default().validate().is_ok());
        let invalid = |settings: AutoscaleSettings| settings.validate().is_err();
        assert!(invalid(AutoscaleSettings { min_tasks: 0, ..AutoscaleSettings::default() }));
        assert!(invalid(AutoscaleSettings { min_tasks: 5, max_tasks: 4, ..AutoscaleSettings::default() }));
        assert!(invalid(AutoscaleSettings { cpu_target_percent: 0.0, ..AutoscaleSettings::default() }));
    }
}
