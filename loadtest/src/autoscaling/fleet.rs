//! One policy's run: the embedded pipeline (receiver, SNS → SQS, ledger), a fleet of worker tasks on its
//! queue, the load against the async endpoint, and the scaling loop beside it, until the queue has drained and
//! the fleet is back at its minimum (or the watch ends).
//!
//! The pipeline's own worker is the fleet's first task: the minimum is at least one, so it never stops. Every
//! other task is a [`Worker`] with the same slots, started [`AutoscaleSettings::startup_delay`] after the
//! scale-out that asked for it and stopped gracefully (newest first) on scale-in. Once a metric period the
//! queue (or the tasks' busy slots) gives a datapoint, which reaches the policy
//! [`AutoscaleSettings::metric_delay`] later. Every duration is lab time, run K times faster; the loop keeps
//! its events on the lab-time grid (samples at whole periods, deliveries and starts at their due times), so a
//! task due when a datapoint is sampled is counted running in it, whatever the ticks' jitter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bus::embedded::EmbeddedQueue;
use hyper::Method;
use ledger::Ledger;
use ledger::embedded::EmbeddedLedger;
use loadgen::LoadModel;
use loadgen::client::Target;
use orders::PaymentConfig;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use worker::{Worker, WorkerConfig, WorkerHandle, default_worker_id};

use super::policy::{AutoscaleSettings, Decision, PolicyKind, TargetTracking, backlog_per_task, cpu_percent};
use crate::experiment::{Environment, ExperimentSettings};
use crate::pipeline::{EmbeddedPipeline, PipelineConfig};
use crate::probe::{Probes, WorkerStatsSource};
use crate::render;
use crate::results::{FleetPoint, Phase, PolicyResult, RunResult, ScalingDecision};
use crate::runner::{self, RunPlan};
use crate::scenario::order_bodies;

/// How many different order bodies a run rotates through (as the other experiments do).
const ORDER_BODIES: usize = 256;

/// The shortest real tick of the scaling loop: below it, sampling the queue and the tasks would start to cost.
const MIN_TICK: Duration = Duration::from_millis(5);

/// One policy's run: the load's results and the fleet's.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    /// The load against the async endpoint (its timeline covers the load; the fleet's covers the rest).
    pub result: RunResult,
    /// What the fleet did.
    pub policy: PolicyResult,
}

/// Runs `lab_load` (lab time) against a fresh embedded pipeline whose worker fleet scales under `kind`, and
/// watches until the queue has drained and the fleet is back at its minimum, `autoscale.after_drain` has
/// passed since the drain, or `settings.drain_cap` (real time) has passed since the load ended.
pub async fn simulate(
    settings: &ExperimentSettings,
    autoscale: &AutoscaleSettings,
    kind: PolicyKind,
    lab_load: &LoadModel,
    stop: &CancellationToken,
) -> std::io::Result<PolicyRun> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let Environment::Embedded(lab) = &settings.environment else {
        return Err(invalid("autoscale simulates the fleet on the embedded stack only".into()));
    };
    autoscale.validate().map_err(invalid)?;
    let scale = settings.time_scale;
    let config = PipelineConfig {
        consumers: autoscale.consumers_per_task,
        payment: PaymentConfig { latency: scale.duration(lab.payment.latency), ..lab.payment.clone() },
        sync_timeout: scale.duration(lab.sync_timeout),
        ..lab.clone()
    };
    let pipeline = EmbeddedPipeline::start(&config).await?;
    // Every task runs the pipeline's own worker's configuration.
    let task_config = crate::pipeline::worker_config(&config);
    let mut fleet = Fleet::new(
        pipeline.worker().clone(),
        task_config,
        pipeline.stack.queue.clone(),
        Arc::clone(&pipeline.ledger),
    );
    let policy = TargetTracking::new(kind.target(autoscale, lab.payment.latency), autoscale);
    fleet.scale_to(policy.desired(), Duration::ZERO, Duration::ZERO);

    let target = Target::local(pipeline.receiver);
    let spec = target.request(Method::POST, "/orders/async", order_bodies(ORDER_BODIES, 42));
    let spec = match settings.idempotency {
        Some(retries) => spec.with_idempotency_keys(retries.time_scaled(scale.factor())),
        None => spec,
    };
    let plan = RunPlan {
        scenario: format!("autoscale-{}", kind.name()),
        mode: "async".to_owned(),
        target,
        spec,
        model: scale.load(lab_load),
        sample_every: scale.duration(settings.sample_every).max(Duration::from_millis(10)),
        late_threshold: settings.late_threshold,
        drain: None,
        progress: settings.progress,
    };
    let probes = Probes {
        queue: Some(Arc::new(pipeline.stack.queue.clone())),
        worker: Some(Arc::new(FleetStats(Arc::clone(&fleet.started)))),
    };
    let load_done = CancellationToken::new();
    let watch = Watch {
        settings: autoscale.clone(),
        kind,
        k: scale.factor(),
        tick: scale.duration(settings.sample_every).max(MIN_TICK),
        drain_cap: settings.drain_cap,
        queue: pipeline.stack.queue.clone(),
    };
    // A task of its own, so that the load's burst does not hold up the scaling loop's ticks.
    let watching = tokio::spawn(watch.run(fleet, policy, load_done.clone(), stop.clone()));
    let result = runner::execute(&plan, &probes, stop).await;
    load_done.cancel();
    let (watched, mut fleet, policy) = watching.await.map_err(std::io::Error::other)?;
    let dead_lettered = pipeline.stack.dead_letter.stats_now().backlog();
    fleet.shutdown().await;
    pipeline.shutdown().await;
    let processed = fleet.settled();

    let decisions = watched
        .decisions
        .iter()
        .map(|d| ScalingDecision {
            at_lab_s: d.at.as_secs_f64(),
            metric: d.metric,
            from_tasks: d.from,
            to_tasks: d.to,
        })
        .collect();
    let policy = PolicyResult {
        policy: kind.name().to_owned(),
        metric: match kind {
            PolicyKind::BacklogPerTask => "visible orders ÷ running tasks (target tracking)".to_owned(),
            PolicyKind::Cpu => "average CPU of the running tasks, % (busy consumers ÷ consumers)".to_owned(),
        },
        target: policy.target(),
        run: result.name.clone(),
        peak_tasks: watched.peak_tasks.0,
        peak_tasks_at_lab_s: watched.peak_tasks.1,
        peak_backlog: watched.peak_backlog.0,
        peak_backlog_at_lab_s: watched.peak_backlog.1,
        oldest_message_age_lab_s: watched.oldest_age_lab_s,
        load_end_lab_s: watched.load_end_lab_s.unwrap_or(watched.observed_lab_s),
        drained: watched.drain_lab_s.is_some(),
        drain_lab_s: watched.drain_lab_s,
        task_minutes: watched.task_minutes,
        observed_lab_s: watched.observed_lab_s,
        ended_at_min: watched.ended_at_min,
        accepted: result.outcomes.accepted,
        processed,
        dead_lettered,
        decisions,
        timeline_csv: render::autoscale::fleet_file_name(kind.name()),
        timeline: watched.timeline,
    };
    Ok(PolicyRun { result, policy })
}

/// The scaling loop's fixed inputs.
struct Watch {
    settings: AutoscaleSettings,
    kind: PolicyKind,
    /// The time scale K: lab time = real time × K.
    k: f64,
    /// Real time between samples.
    tick: Duration,
    /// Real time the watch may last after the load.
    drain_cap: Duration,
    queue: EmbeddedQueue,
}

/// What the scaling loop saw.
struct Watched {
    timeline: Vec<FleetPoint>,
    decisions: Vec<Decision>,
    /// Most running tasks, and when first reached (lab s).
    peak_tasks: (usize, f64),
    /// Largest backlog, and when (lab s).
    peak_backlog: (u64, f64),
    oldest_age_lab_s: f64,
    load_end_lab_s: Option<f64>,
    drain_lab_s: Option<f64>,
    task_minutes: f64,
    observed_lab_s: f64,
    ended_at_min: bool,
}

impl Watch {
    /// Samples, scales and records once a tick until the watch ends (see [`simulate`]).
    async fn run(
        self,
        mut fleet: Fleet,
        mut policy: TargetTracking,
        load_done: CancellationToken,
        stop: CancellationToken,
    ) -> (Watched, Fleet, TargetTracking) {
        let settings = &self.settings;
        let (period, delay) = (settings.metric_period, settings.metric_delay);
        let start = Instant::now();
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watched = Watched {
            timeline: Vec::new(),
            decisions: Vec::new(),
            peak_tasks: (0, 0.0),
            peak_backlog: (0, 0.0),
            oldest_age_lab_s: 0.0,
            load_end_lab_s: None,
            drain_lab_s: None,
            task_minutes: 0.0,
            observed_lab_s: 0.0,
            ended_at_min: false,
        };
        let mut last = Duration::ZERO;
        let mut next_sample = period;
        // The CPU datapoint is the period's average: busy-percent × lab seconds, and the seconds.
        let (mut cpu_area, mut cpu_seconds) = (0.0, 0.0);
        let mut in_transit: VecDeque<(Duration, f64)> = VecDeque::new();
        let mut load_end: Option<(Duration, Instant)> = None;
        let mut drained_at: Option<Duration> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
            let now = start.elapsed().mul_f64(self.k);
            let seconds = now.saturating_sub(last).as_secs_f64();
            watched.task_minutes += fleet.billed() as f64 * seconds / 60.0;
            fleet.start_due(now);
            fleet.reap();
            let stats = self.queue.stats_now();
            let cpu = cpu_percent(fleet.busy(), fleet.running() * fleet.consumers());
            cpu_area += cpu * seconds;
            cpu_seconds += seconds;
            if load_end.is_none() && load_done.is_cancelled() {
                load_end = Some((now, Instant::now()));
            }
            if load_end.is_some() && drained_at.is_none() && stats.backlog() == 0 {
                drained_at = Some(now);
            }
            while next_sample <= now {
                let metric = match self.kind {
                    PolicyKind::BacklogPerTask => backlog_per_task(stats.visible, fleet.running()),
                    PolicyKind::Cpu if cpu_seconds > 0.0 => cpu_area / cpu_seconds,
                    PolicyKind::Cpu => cpu,
                };
                (cpu_area, cpu_seconds) = (0.0, 0.0);
                in_transit.push_back((next_sample + delay, metric));
                next_sample += period;
            }
            while let Some(&(due, metric)) = in_transit.front()
                && due <= now
            {
                in_transit.pop_front();
                if let Some(decision) = policy.observe(due, metric) {
                    fleet.scale_to(decision.to, due, settings.startup_delay);
                    watched.decisions.push(decision);
                }
            }
            fleet.start_due(now);

            let t_lab_s = now.as_secs_f64();
            let running = fleet.running();
            if running > watched.peak_tasks.0 {
                watched.peak_tasks = (running, t_lab_s);
            }
            if stats.backlog() > watched.peak_backlog.0 {
                watched.peak_backlog = (stats.backlog(), t_lab_s);
            }
            let oldest_age_lab_s = stats.oldest_age.map(|age| age.as_secs_f64() * self.k);
            watched.oldest_age_lab_s = watched.oldest_age_lab_s.max(oldest_age_lab_s.unwrap_or(0.0));
            watched.timeline.push(FleetPoint {
                t_lab_s,
                phase: if load_end.is_some() { Phase::Drain } else { Phase::Load },
                desired_tasks: policy.desired(),
                starting_tasks: fleet.starting(),
                running_tasks: running,
                stopping_tasks: fleet.stopping(),
                queue_visible: stats.visible,
                queue_in_flight: stats.in_flight,
                queue_backlog: stats.backlog(),
                oldest_age_lab_s,
                cpu_percent: cpu,
                processed: fleet.settled(),
            });
            last = now;
            watched.observed_lab_s = t_lab_s;
            watched.ended_at_min = fleet.at_rest(settings.min_tasks);

            let Some((_, load_ended)) = load_end else { continue };
            if let Some(drained) = drained_at {
                // Every datapoint that saw the load has arrived once a period and a delay have passed.
                let settled = watched.ended_at_min && now >= drained + period + delay;
                if settled || now.saturating_sub(drained) >= settings.after_drain {
                    break;
                }
            }
            if load_ended.elapsed() >= self.drain_cap {
                break;
            }
        }
        watched.load_end_lab_s = load_end.map(|(at, _)| at.as_secs_f64());
        watched.drain_lab_s = match (load_end, drained_at) {
            (Some((ended, _)), Some(drained)) => Some(drained.saturating_sub(ended).as_secs_f64()),
            _ => None,
        };
        (watched, fleet, policy)
    }
}

/// A worker task that has started.
struct Started {
    handle: WorkerHandle,
    stop: CancellationToken,
    /// `None` for the pipeline's own worker, which stops with the pipeline.
    join: Option<JoinHandle<()>>,
}

/// A task's life: billed from the scale-out that asks for it to the end of its graceful stop.
enum Task {
    Starting { ready_at: Duration },
    Running(Started),
    Stopping(Started),
}

/// The worker service's tasks, in the order they were asked for; the first is the pipeline's worker.
struct Fleet {
    tasks: Vec<Task>,
    /// Every task that ever started, for the orders they settled (shared with the run's worker probe).
    started: Arc<Mutex<Vec<WorkerHandle>>>,
    config: WorkerConfig,
    queue: EmbeddedQueue,
    ledger: Arc<EmbeddedLedger>,
}

impl Fleet {
    fn new(
        first: WorkerHandle,
        config: WorkerConfig,
        queue: EmbeddedQueue,
        ledger: Arc<EmbeddedLedger>,
    ) -> Fleet {
        let first_task = Started { handle: first.clone(), stop: CancellationToken::new(), join: None };
        Fleet {
            tasks: vec![Task::Running(first_task)],
            started: Arc::new(Mutex::new(vec![first])),
            config,
            queue,
            ledger,
        }
    }

    fn consumers(&self) -> usize {
        self.config.consumers
    }

    /// Tasks asked for and not stopping: the service's desired count once scaling has been applied.
    fn active(&self) -> usize {
        self.tasks.iter().filter(|task| !matches!(task, Task::Stopping(_))).count()
    }

    fn starting(&self) -> usize {
        self.tasks.iter().filter(|task| matches!(task, Task::Starting { .. })).count()
    }

    fn running(&self) -> usize {
        self.tasks.iter().filter(|task| matches!(task, Task::Running(_))).count()
    }

    fn stopping(&self) -> usize {
        self.tasks.iter().filter(|task| matches!(task, Task::Stopping(_))).count()
    }

    /// Tasks Fargate bills: starting, running and stopping.
    fn billed(&self) -> usize {
        self.tasks.len()
    }

    /// Whether exactly `min` tasks run and none starts or stops.
    fn at_rest(&self, min: usize) -> bool {
        self.tasks.len() == min && self.running() == min
    }

    /// Busy consumers of the running tasks.
    fn busy(&self) -> usize {
        let consumers = self.consumers();
        self.tasks
            .iter()
            .filter_map(|task| match task {
                Task::Running(started) => Some(started.handle.in_flight().min(consumers)),
                _ => None,
            })
            .sum()
    }

    /// Orders settled by every task so far.
    fn settled(&self) -> u64 {
        self.started.lock().map_or(0, |handles| handles.iter().map(WorkerHandle::settled).sum())
    }

    /// Asks for `desired` tasks at `now`: new ones take orders `startup` later; surplus ones go newest first,
    /// a starting one simply not started, a running one stopped gracefully. The first task never goes.
    fn scale_to(&mut self, desired: usize, now: Duration, startup: Duration) {
        let mut active = self.active();
        while active < desired {
            self.tasks.push(Task::Starting { ready_at: now + startup });
            active += 1;
        }
        let mut index = self.tasks.len();
        while active > desired && index > 1 {
            index -= 1;
            match &self.tasks[index] {
                Task::Starting { .. } => {
                    self.tasks.remove(index);
                }
                Task::Running(_) => {
                    let Task::Running(started) = self.tasks.remove(index) else { unreachable!("matched") };
                    started.stop.cancel();
                    self.tasks.insert(index, Task::Stopping(started));
                }
                Task::Stopping(_) => continue,
            }
            active -= 1;
        }
    }

    /// Starts the tasks whose start-up delay has passed by `now`.
    fn start_due(&mut self, now: Duration) {
        for index in 0..self.tasks.len() {
            if let Task::Starting { ready_at } = self.tasks[index]
                && ready_at <= now
            {
                self.tasks[index] = Task::Running(self.spawn());
            }
        }
    }

    fn spawn(&self) -> Started {
        let config = WorkerConfig { worker_id: default_worker_id(), ..self.config.clone() };
        let worker =
            Worker::new(config, Arc::new(self.queue.clone()), Arc::clone(&self.ledger) as Arc<dyn Ledger>);
        let handle = worker.handle();
        if let Ok(mut started) = self.started.lock() {
            started.push(handle.clone());
        }
        let stop = CancellationToken::new();
        let join = tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(error) = worker.run(stop.cancelled_owned()).await {
                    tracing::error!(%error, "worker task stopped with an error");
                }
            }
        });
        Started { handle, stop, join: Some(join) }
    }

    /// Forgets the tasks whose graceful stop has finished.
    fn reap(&mut self) {
        self.tasks.retain(|task| match task {
            Task::Stopping(Started { join: Some(join), .. }) => !join.is_finished(),
            _ => true,
        });
    }

    /// Stops every task but the first (the pipeline stops that one) and waits for their graceful stops.
    async fn shutdown(&mut self) {
        let patience = self.config.worst_case_shutdown();
        let mut joins = Vec::new();
        for task in self.tasks.drain(1..) {
            if let Task::Running(started) | Task::Stopping(started) = task {
                started.stop.cancel();
                joins.extend(started.join);
            }
        }
        for join in joins {
            if tokio::time::timeout(patience, join).await.is_err() {
                tracing::warn!("a worker task did not stop within its shutdown budget");
            }
        }
    }
}

/// The fleet's settled orders as a worker's `/stats` would give them (summed over every task), for the
/// run's timeline.
struct FleetStats(Arc<Mutex<Vec<WorkerHandle>>>);

#[async_trait]
impl WorkerStatsSource for FleetStats {
    async fn stats(&self) -> Option<serde_json::Value> {
        let handles = self.0.lock().ok()?.clone();
        let (mut completed, mut declined) = (0, 0);
        for handle in &handles {
            let stats = handle.stats();
            completed += stats.completed;
            declined += stats.declined;
        }
        Some(
            serde_json::json!({ "completed": completed, "declined": declined, "tasks_started": handles.len() }),
        )
    }
}
