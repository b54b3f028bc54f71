# SLO of the asynchronous accept path: at least slo_async_target_percent of POST /orders/async
# answered without a 5xx and within slo_async_latency_seconds, over slo_window_days.
#
# The SLI comes from the ALB target group only that route reaches (alb.tf), per window W:
#   bad   = the group's target 5xx + its responses slower than the threshold (TC, a trimmed count of
#           TargetResponseTime) + the ALB's own 5xx. The ALB's 5xx have no target group dimension, so
#           the whole load balancer's count is charged to this SLO: conservative, and in practice
#           they are outages (no healthy target) that the async path shares.
#   total = the group's RequestCount (at least bad, so the ratio stays within 0..1)
#   burn rate = (bad / total) / error budget, where the error budget = 1 - target.
#
# Multi-window burn-rate alarms (the Google SRE workbook's): a pair fires when both its long and its
# short window burn faster than its factor; the short window makes the alarm reset soon after the
# burning stops. Factors follow from the share of the window's budget a pair may burn in its long
# window: 2% in 1 h (14.4x at 30 days) and 5% in 6 h (6x at 30 days). Each window is its own alarm
# whose metrics have that window as their period; a composite alarm ANDs the two of a pair and is the
# one that notifies.

locals {
  # Rounded to 9 significant digits: 99.9 has no exact binary form, and the figure goes into an
  # expression and the README (0.001, not 0.000999...).
  slo_error_budget = tonumber(format("%.9g", (100 - var.slo_async_target_percent) / 100))
  slo_window_hours = var.slo_window_days * 24

  slo_burn_pairs = {
    fast = { long = 3600, short = 300, budget_percent = 2 }
    slow = { long = 21600, short = 1800, budget_percent = 5 }
  }
  # factor = share of the budget x window / long window: 2% x 720 h / 1 h = 14.4 at 30 days.
  slo_burn_factor = {
    for pair, p in local.slo_burn_pairs : pair => p.budget_percent * local.slo_window_hours * 3600 / (100 * p.long)
  }
  slo_burn_windows = merge([
    for pair, p in local.slo_burn_pairs : {
      "${pair}-long"  = { pair = pair, seconds = p.long }
      "${pair}-short" = { pair = pair, seconds = p.short }
    }
  ]...)

  slo_target_group = {
    LoadBalancer = aws_lb.main.arn_suffix
    TargetGroup  = aws_lb_target_group.receiver_async.arn_suffix
  }
}

resource "aws_cloudwatch_metric_alarm" "slo_async_burn" {
  for_each = local.slo_burn_windows

  alarm_name        = "${var.name}-slo-async-burn-${each.key}"
  alarm_description = "Error-budget burn rate of POST /orders/async over ${each.value.seconds / 60} minutes above ${local.slo_burn_factor[each.value.pair]}x. One window of the ${each.value.pair} pair: ${var.name}-slo-async-burn-${each.value.pair} notifies when both windows of the pair are in alarm."

  comparison_operator = "GreaterThanThreshold"
  threshold           = local.slo_burn_factor[each.value.pair]
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching" # no requests burn no budget

  metric_query {
    id          = "burn_rate"
    label       = "Error-budget burn rate, POST /orders/async"
    expression  = "IF(bad > 0, bad / MAX([FILL(requests, 0), bad]), 0) / ${local.slo_error_budget}"
    return_data = true
  }

  metric_query {
    id         = "bad"
    label      = "Async requests answered 5xx or too slowly"
    expression = "FILL(target_5xx, 0) + FILL(slow, 0) + FILL(elb_5xx, 0)"
  }

  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = local.slo_target_group
      stat        = "Sum"
      period      = each.value.seconds
    }
  }

  metric_query {
    id = "target_5xx"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = local.slo_target_group
      stat        = "Sum"
      period      = each.value.seconds
    }
  }

  metric_query {
    id = "slow"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "TargetResponseTime"
      dimensions  = local.slo_target_group
      # Trimmed count: the responses slower than the threshold (the range excludes its lower bound).
      stat   = "TC(${var.slo_async_latency_seconds}:)"
      period = each.value.seconds
    }
  }

  metric_query {
    id = "elb_5xx"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.main.arn_suffix }
      stat        = "Sum"
      period      = each.value.seconds
    }
  }
}

resource "aws_cloudwatch_composite_alarm" "slo_async_burn" {
  for_each = local.slo_burn_pairs

  alarm_name        = "${var.name}-slo-async-burn-${each.key}"
  alarm_description = "POST /orders/async burns its error budget (${var.slo_async_target_percent}% over ${var.slo_window_days} days) at more than ${local.slo_burn_factor[each.key]}x over both ${each.value.long / 3600} h and ${each.value.short / 60} min: ${each.value.budget_percent}% of the budget is gone within ${each.value.long / 3600} h at this rate. Look at the receiver's 5xx (publish or ledger failures) and its latency."
  alarm_rule        = "ALARM(\"${aws_cloudwatch_metric_alarm.slo_async_burn["${each.key}-long"].alarm_name}\") AND ALARM(\"${aws_cloudwatch_metric_alarm.slo_async_burn["${each.key}-short"].alarm_name}\")"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}
