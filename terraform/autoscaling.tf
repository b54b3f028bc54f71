# Worker autoscaling on backlog per task, the AWS recipe for queue consumers:
#   metric = visible messages / running worker tasks
#   target = acceptable latency / processing time per message (per task: x consumers per task)
# Target tracking adds tasks when each has more queued work than it can finish within the
# acceptable latency, and removes them when the backlog shrinks.

locals {
  # Orders one task can hold in its backlog and still finish within acceptable_latency_seconds.
  worker_backlog_per_task_target = var.acceptable_latency_seconds * var.worker_consumers / var.payment_latency_seconds
}

resource "aws_appautoscaling_target" "worker" {
  count = var.worker_autoscaling_enabled ? 1 : 0

  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.worker.name}"
  min_capacity       = var.worker_min_count
  max_capacity       = var.worker_max_count

  lifecycle {
    precondition {
      condition     = var.worker_min_count >= 1 && var.worker_min_count <= var.worker_max_count
      error_message = "Need 1 <= worker_min_count <= worker_max_count (backlog per task divides by the running task count)."
    }
  }
}

resource "aws_appautoscaling_policy" "worker_backlog_per_task" {
  count = var.worker_autoscaling_enabled ? 1 : 0

  name               = "${var.name}-worker-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.worker[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.worker[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.worker[0].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = local.worker_backlog_per_task_target
    scale_out_cooldown = var.scale_out_cooldown_seconds
    scale_in_cooldown  = var.scale_in_cooldown_seconds

    customized_metric_specification {
      metrics {
        id          = "visible"
        label       = "Orders waiting in the queue"
        return_data = false

        metric_stat {
          stat = "Sum"
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"
            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.orders.name
            }
          }
        }
      }

      metrics {
        id          = "tasks"
        label       = "Running worker tasks"
        return_data = false

        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.main.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.worker.name
            }
          }
        }
      }

      metrics {
        id          = "backlog_per_task"
        label       = "Orders waiting per worker task"
        expression  = "visible / tasks"
        return_data = true
      }
    }
  }
}
