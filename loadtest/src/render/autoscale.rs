//! `autoscale`'s results: the terminal table comparing the policies, the report's section (tables and charts
//! of task count, backlog and oldest age over lab time), and the fleet timeline CSVs.

use std::fmt::Write as _;
use std::path::Path;

use crate::render::html::ChartSeries;
use crate::render::text::human;
use crate::results::{AutoscaleReport, FleetPoint, PolicyResult, ResultsDocument};

/// Colours of the policies in the charts, in the order the command runs them (backlog, then CPU).
const POLICY_COLOURS: [(u8, u8, u8); 4] = [(20, 90, 200), (220, 60, 30), (0, 130, 60), (150, 150, 150)];

/// The policies side by side, the Terraform variables, and a per-minute story of tasks and backlog, as printed
/// after `autoscale`.
pub fn text(document: &ResultsDocument) -> String {
    let mut out = format!(
        "\norderflow autoscale — target: {}, time scale K = {}\n",
        document.target, document.time_scale
    );
    for note in &document.notes {
        let _ = writeln!(out, "  * {note}");
    }
    let Some(report) = &document.autoscale else {
        out.push_str("no autoscaling results\n");
        return out;
    };
    out.push_str(&settings_text(report));
    let policies = &report.policies;
    let _ = write!(out, "\n{:<34}", "(lab time)");
    for policy in policies {
        let _ = write!(out, "{:>26}", policy.policy);
    }
    out.push('\n');
    let mut row = |label: &str, pick: &dyn Fn(&PolicyResult) -> String| {
        let _ = write!(out, "{label:<34}");
        for policy in policies {
            let _ = write!(out, "{:>26}", pick(policy));
        }
        out.push('\n');
    };
    row("target", &|p| format!("{:.0} {}", p.target, if p.policy == "cpu" { "%" } else { "per task" }));
    row("orders accepted / settled", &|p| format!("{} / {}", p.accepted, p.processed));
    row("dead-lettered", &|p| p.dead_lettered.to_string());
    row("peak tasks (first reached at)", &|p| format!("{} ({})", p.peak_tasks, human(p.peak_tasks_at_lab_s)));
    row("peak backlog (at)", &|p| format!("{} ({})", p.peak_backlog, human(p.peak_backlog_at_lab_s)));
    row("drain time (after the load)", &|p| p.drain_lab_s.map_or("not drained".to_owned(), human));
    row("oldest message's age (max)", &|p| human(p.oldest_message_age_lab_s));
    row("task-minutes (the cost)", &|p| format!("{:.1}", p.task_minutes));
    row("watched for", &|p| {
        format!("{}{}", human(p.observed_lab_s), if p.ended_at_min { "" } else { " (above min)" })
    });
    for policy in policies {
        let decisions: Vec<String> = policy
            .decisions
            .iter()
            .map(|d| format!("{}: {}→{} ({:.0})", human(d.at_lab_s), d.from_tasks, d.to_tasks, d.metric))
            .collect();
        let _ = writeln!(
            out,
            "  {} decisions (when: desired from→to (metric)): {}",
            policy.policy,
            if decisions.is_empty() { "none".to_owned() } else { decisions.join(", ") }
        );
    }
    out.push_str(&minute_story(policies));
    out
}

fn settings_text(report: &AutoscaleReport) -> String {
    let mut out =
        String::from("\nTerraform variables these settings correspond to (terraform/variables.tf):\n");
    let width = report.terraform.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for variable in &report.terraform {
        let _ = writeln!(out, "  {:<width$} = {}", variable.name, variable.value);
    }
    let s = &report.settings;
    let _ = writeln!(
        out,
        "  → backlog-per-task target (local.worker_backlog_per_task_target) = {} × {} ÷ {} = {:.1} orders per task",
        s.acceptable_latency_s, s.consumers_per_task, s.payment_latency_s, s.backlog_per_task_target
    );
    let _ = writeln!(
        out,
        "Simulation only (AWS behaviour, no Terraform variable): a datapoint every {} seen {} late; scale out after \
         {} datapoints above the target, in after {} below 90 % of it; a new task takes orders after {}; the CPU \
         policy (not in terraform/) targets {} %; watched up to {} after the drain.",
        human(s.metric_period_s),
        human(s.metric_delay_s),
        s.scale_out_datapoints,
        s.scale_in_datapoints,
        human(s.startup_delay_s),
        s.cpu_target_percent,
        human(s.after_drain_s),
    );
    out
}

/// Running tasks and backlog at each whole lab minute, the policies side by side.
fn minute_story(policies: &[PolicyResult]) -> String {
    let mut out = String::from("\ntask count and backlog over time (at each lab minute):\n  minute");
    for policy in policies {
        let _ = write!(out, " | {:>18} tasks  backlog", policy.policy);
    }
    out.push('\n');
    let minutes = policies.iter().map(|p| p.observed_lab_s / 60.0).fold(0.0, f64::max).floor() as usize;
    for minute in 0..=minutes {
        let _ = write!(out, "  {minute:>6}");
        for policy in policies {
            match at_or_before(&policy.timeline, minute as f64 * 60.0) {
                Some(point) => {
                    let _ = write!(out, " | {:>24}  {:>7}", point.running_tasks, point.queue_backlog);
                }
                None => {
                    let _ = write!(out, " | {:>24}  {:>7}", "", "");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The last point at or before `t_lab_s` (`None` before the first, or after the policy's watch ended).
fn at_or_before(timeline: &[FleetPoint], t_lab_s: f64) -> Option<&FleetPoint> {
    if t_lab_s > timeline.last()?.t_lab_s {
        return None;
    }
    timeline.iter().take_while(|p| p.t_lab_s <= t_lab_s).last().or(timeline.first())
}

/// The report's autoscaling section: the settings and Terraform variables, the policies' table, and charts of
/// running tasks, backlog and the oldest message's age over lab minutes (the dashed line: end of the load).
pub fn html_section(document: &ResultsDocument) -> String {
    let Some(report) = &document.autoscale else { return String::new() };
    let escape = super::html::escape_text;
    let mut html = String::from(
        "<h2>Autoscaling: backlog per task vs CPU</h2><p>Terraform variables these settings correspond to:</p><pre>",
    );
    for variable in &report.terraform {
        let _ = writeln!(html, "{} = {}", escape(&variable.name), variable.value);
    }
    let s = &report.settings;
    let _ = write!(
        html,
        "</pre><p>Backlog-per-task target = {} × {} ÷ {} = {:.1} orders per task. Simulation only: a datapoint \
         every {} s seen {} s late, scale out after {} datapoints above the target and in after {} below 90 % of it, \
         {} s task start-up, CPU target {} % (for contrast; not in terraform/). All times in lab time.</p>",
        s.acceptable_latency_s,
        s.consumers_per_task,
        s.payment_latency_s,
        s.backlog_per_task_target,
        s.metric_period_s,
        s.metric_delay_s,
        s.scale_out_datapoints,
        s.scale_in_datapoints,
        s.startup_delay_s,
        s.cpu_target_percent,
    );
    html.push_str(
        "<table><tr><th>policy</th><th>target</th><th>peak tasks</th><th>peak at (lab min)</th><th>peak backlog</th>\
         <th>drain min</th><th>oldest age min</th><th>task-minutes</th><th>accepted / settled</th>\
         <th>dead-lettered</th></tr>",
    );
    for p in &report.policies {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}{}</td>\
             <td>{} / {}</td><td>{}</td></tr>",
            escape(&p.policy),
            p.target,
            p.peak_tasks,
            p.peak_tasks_at_lab_s / 60.0,
            p.peak_backlog,
            p.drain_lab_s.map_or("not drained".to_owned(), |d| format!("{:.1}", d / 60.0)),
            p.oldest_message_age_lab_s / 60.0,
            p.task_minutes,
            if p.ended_at_min { "" } else { " (above min at the end)" },
            p.accepted,
            p.processed,
            p.dead_lettered,
        );
    }
    html.push_str("</table>");
    let load_end = report.policies.first().map(|p| p.load_end_lab_s / 60.0);
    let chart = |title: &str, y_label: &str, pick: fn(&FleetPoint) -> Option<f64>| {
        let series: Vec<ChartSeries> = report
            .policies
            .iter()
            .zip(POLICY_COLOURS.iter().cycle())
            .map(|(policy, &rgb)| ChartSeries {
                name: policy.policy.clone(),
                rgb,
                points: policy
                    .timeline
                    .iter()
                    .filter_map(|p| pick(p).map(|y| (p.t_lab_s / 60.0, y)))
                    .collect(),
            })
            .collect();
        super::html::series_chart(title, "lab minutes since the load began", y_label, &series, load_end)
    };
    html.push_str(&chart("Running worker tasks", "tasks", |p| Some(p.running_tasks as f64)));
    html.push_str(&chart("Backlog (visible + in flight)", "messages", |p| Some(p.queue_backlog as f64)));
    html.push_str(&chart("Oldest message's age", "lab seconds", |p| p.oldest_age_lab_s));
    html
}

/// Writes a fleet timeline to `path` with a header row ([`FleetPoint`]'s fields, in order).
pub fn write_fleet_timeline(path: &Path, timeline: &[FleetPoint]) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    for point in timeline {
        writer.serialize(point)?;
    }
    writer.flush()
}

/// The fleet timeline's file name for a policy: `fleet-backlog-per-task.csv`.
pub fn fleet_file_name(policy: &str) -> String {
    super::csv::file_name(&format!("fleet-{policy}"))
}
