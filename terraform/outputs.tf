output "alb_url" {
  description = "Base URL of the receiver behind the ALB (POST /orders/async, POST /orders/sync, GET /health)."
  value       = "${local.https ? "https" : "http"}://${aws_lb.main.dns_name}"
}

output "ecr_repository_urls" {
  description = "ECR repository URL per service; push the image built with --target <service> here."
  value       = { for service, repo in aws_ecr_repository.service : service => repo.repository_url }
}

output "orders_topic_arn" {
  description = "SNS topic the receiver publishes to (ORDERS_TOPIC_ARN)."
  value       = aws_sns_topic.orders.arn
}

output "orders_queue_url" {
  description = "SQS queue the worker consumes (ORDERS_QUEUE_URL); pass it to `loadtest compare --queue-url`."
  value       = aws_sqs_queue.orders.id
}

output "orders_dlq_url" {
  description = "Dead-letter queue of the orders queue (ORDERS_DLQ_URL)."
  value       = aws_sqs_queue.orders_dlq.id
}

output "orders_table_name" {
  description = "DynamoDB table of the order ledger (ORDERS_TABLE of both services)."
  value       = aws_dynamodb_table.orders.name
}

output "orders_table_arn" {
  description = "ARN of the order ledger table (the only DynamoDB resource the task roles may use)."
  value       = aws_dynamodb_table.orders.arn
}

output "ecs_cluster_name" {
  description = "ECS cluster running both services."
  value       = aws_ecs_cluster.main.name
}

output "ecs_service_names" {
  description = "ECS service name per service (for `aws ecs update-service --force-new-deployment`)."
  value       = { receiver = aws_ecs_service.receiver.name, worker = aws_ecs_service.worker.name }
}

output "log_group_names" {
  description = "CloudWatch log group per service."
  value       = { for service, group in aws_cloudwatch_log_group.service : service => group.name }
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify, or null when alarm_email is unset."
  value       = one(aws_sns_topic.alarms[*].arn)
}

output "worker_backlog_per_task_target" {
  description = "Target of the worker scaling policy: orders waiting per task (acceptable latency x consumers / payment latency)."
  value       = local.worker_backlog_per_task_target
}

output "worker_stop_budget" {
  description = "The worker's shutdown budget in seconds: SHUTDOWN_DEADLINE, the release and flush graces of worker/src/lib.rs, the margin, and the container's stopTimeout (their sum)."
  value       = merge(local.worker_stop_budget, { stop_timeout = local.stop_timeout.worker })
}

output "slo_async" {
  description = "The async accept path's SLO: target, window, error budget (fraction and minutes per window) and the burn-rate factor of each alarm pair."
  value = {
    target_percent       = var.slo_async_target_percent
    latency_seconds      = var.slo_async_latency_seconds
    window_days          = var.slo_window_days
    error_budget         = local.slo_error_budget
    error_budget_minutes = local.slo_error_budget * local.slo_window_hours * 60
    burn_rate_factors    = local.slo_burn_factor
  }
}

output "orders_undelivered_queue_url" {
  description = "The SNS subscription's DLQ: accepted orders SNS could not deliver to the orders queue."
  value       = aws_sqs_queue.orders_undelivered.id
}
