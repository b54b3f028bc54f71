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
