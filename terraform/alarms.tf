# Alarms on the signals that mean orders are late or lost. With var.alarm_email set they notify an
# encrypted SNS topic; without it they only show in the CloudWatch console.

resource "aws_sns_topic" "alarms" {
  count = var.alarm_email == null ? 0 : 1

  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email == null ? 0 : 1

  topic_arn = aws_sns_topic.alarms[0].arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  alarm_actions = aws_sns_topic.alarms[*].arn

  backlog_alarms = {
    warning  = { threshold = var.backlog_warning_threshold, periods = 5 }
    critical = { threshold = var.backlog_critical_threshold, periods = 3 }
  }
}

resource "aws_cloudwatch_metric_alarm" "backlog" {
  for_each = local.backlog_alarms

  alarm_name        = "${var.name}-orders-backlog-${each.key}"
  alarm_description = "${title(each.key)}: more than ${each.value.threshold} orders waiting in ${aws_sqs_queue.orders.name} for ${each.value.periods} minutes. Workers are too few or failing; check the worker service and its scaling."

  namespace   = "AWS/SQS"
  metric_name = "ApproximateNumberOfMessagesVisible"
  dimensions  = { QueueName = aws_sqs_queue.orders.name }
  statistic   = "Maximum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  evaluation_periods  = each.value.periods
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "oldest_message_age" {
  alarm_name        = "${var.name}-orders-oldest-message-age"
  alarm_description = "The oldest order in ${aws_sqs_queue.orders.name} has waited more than ${var.oldest_message_age_threshold_seconds} s: customers wait too long, or a message keeps failing before reaching the DLQ."

  namespace   = "AWS/SQS"
  metric_name = "ApproximateAgeOfOldestMessage"
  dimensions  = { QueueName = aws_sqs_queue.orders.name }
  statistic   = "Maximum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_message_age_threshold_seconds
  evaluation_periods  = 3
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  alarm_name        = "${var.name}-orders-dlq-not-empty"
  alarm_description = "Orders reached ${aws_sqs_queue.orders_dlq.name}: inspect them, fix the cause, then redrive (StartMessageMoveTask)."

  namespace   = "AWS/SQS"
  metric_name = "ApproximateNumberOfMessagesVisible"
  dimensions  = { QueueName = aws_sqs_queue.orders_dlq.name }
  statistic   = "Maximum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

# --- Orders SNS could not deliver (the subscription's DLQ, messaging.tf) ------------------------

resource "aws_cloudwatch_metric_alarm" "orders_delivery_failed" {
  alarm_name        = "${var.name}-orders-delivery-failed"
  alarm_description = "SNS failed to deliver accepted orders from ${aws_sns_topic.orders.name} to ${aws_sqs_queue.orders.name} (NumberOfNotificationsFailed). After its retries SNS moves them to ${aws_sqs_queue.orders_undelivered.name}: check the queue policy and the queue, then move them into the orders queue."

  namespace   = "AWS/SNS"
  metric_name = "NumberOfNotificationsFailed"
  dimensions  = { TopicName = aws_sns_topic.orders.name }
  statistic   = "Sum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "orders_undelivered_not_empty" {
  alarm_name        = "${var.name}-orders-undelivered-not-empty"
  alarm_description = "Accepted orders are in ${aws_sqs_queue.orders_undelivered.name}: SNS gave up delivering them to ${aws_sqs_queue.orders.name}. No worker has seen them; fix the delivery, then move them into the orders queue."

  namespace   = "AWS/SQS"
  metric_name = "ApproximateNumberOfMessagesVisible"
  dimensions  = { QueueName = aws_sqs_queue.orders_undelivered.name }
  statistic   = "Maximum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

# --- The load balancer and the services --------------------------------------------------------

locals {
  alb_5xx_alarms = {
    target = { metric = "HTTPCode_Target_5XX_Count", source = "the receiver tasks" }
    elb    = { metric = "HTTPCode_ELB_5XX_Count", source = "the ALB itself (no healthy target, a target reset or timed out)" }
  }
  receiver_target_groups = {
    receiver = aws_lb_target_group.receiver
    async    = aws_lb_target_group.receiver_async
  }
  ecs_services = {
    receiver = aws_ecs_service.receiver.name
    worker   = aws_ecs_service.worker.name
  }
}

resource "aws_cloudwatch_metric_alarm" "alb_5xx" {
  for_each = local.alb_5xx_alarms

  alarm_name        = "${var.name}-alb-${each.key}-5xx"
  alarm_description = "More than ${var.alb_5xx_threshold} 5xx answers a minute from ${each.value.source}, in 3 of 5 minutes. POST /orders/sync answers 504 by design when payments queue up; anything else means lost requests."

  namespace   = "AWS/ApplicationELB"
  metric_name = each.value.metric
  dimensions  = { LoadBalancer = aws_lb.main.arn_suffix }
  statistic   = "Sum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alb_5xx_threshold
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "unhealthy_hosts" {
  for_each = local.receiver_target_groups

  alarm_name        = "${var.name}-alb-${each.key}-unhealthy-hosts"
  alarm_description = "Receiver tasks in target group ${each.value.name} fail the ALB's /health check for 3 minutes: look at the receiver's logs and the service's stopped tasks."

  namespace   = "AWS/ApplicationELB"
  metric_name = "UnHealthyHostCount"
  dimensions = {
    LoadBalancer = aws_lb.main.arn_suffix
    TargetGroup  = each.value.arn_suffix
  }
  statistic = "Maximum"
  period    = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 3
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

# Running below desired: Container Insights publishes both counts per service; the difference stays
# positive while tasks fail to start or keep crashing (a deployment or scale-out closes it in minutes).
resource "aws_cloudwatch_metric_alarm" "tasks_below_desired" {
  for_each = local.ecs_services

  alarm_name        = "${var.name}-${each.key}-tasks-below-desired"
  alarm_description = "The ${each.value} service has run fewer tasks than desired for ${var.tasks_below_desired_minutes} minutes: tasks fail to start (image, role, capacity) or keep crashing. See `aws ecs describe-services` events and the stopped tasks' reasons."

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = var.tasks_below_desired_minutes
  # Missing data is a new service before its first Container Insights sample, not a failure.
  treat_missing_data = "notBreaching"

  metric_query {
    id          = "missing"
    expression  = "desired - running"
    label       = "Tasks desired but not running"
    return_data = true
  }

  metric_query {
    id = "desired"
    metric {
      namespace   = "ECS/ContainerInsights"
      metric_name = "DesiredTaskCount"
      dimensions  = { ClusterName = aws_ecs_cluster.main.name, ServiceName = each.value }
      stat        = "Minimum"
      period      = 60
    }
  }

  metric_query {
    id = "running"
    metric {
      namespace   = "ECS/ContainerInsights"
      metric_name = "RunningTaskCount"
      dimensions  = { ClusterName = aws_ecs_cluster.main.name, ServiceName = each.value }
      stat        = "Maximum"
      period      = 60
    }
  }

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}
