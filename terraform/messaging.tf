# receiver -> SNS topic -> (raw delivery) -> SQS queue -> worker; after max_receive_count failed
# deliveries SQS moves a message to the DLQ. bus::embedded::EmbeddedStack mirrors exactly this shape.

resource "aws_sns_topic" "orders" {
  name              = "${var.name}-orders"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sqs_queue" "orders" {
  name                       = "${var.name}-orders"
  visibility_timeout_seconds = var.queue_visibility_timeout_seconds
  message_retention_seconds  = var.queue_retention_seconds
  receive_wait_time_seconds  = var.queue_receive_wait_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.orders_dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  lifecycle {
    precondition {
      condition     = var.queue_visibility_timeout_seconds > var.payment_latency_seconds
      error_message = "queue_visibility_timeout_seconds must exceed payment_latency_seconds, or every order is delivered twice while it is still being paid for."
    }
  }
}

resource "aws_sqs_queue" "orders_dlq" {
  name                      = "${var.name}-orders-dlq"
  message_retention_seconds = var.dlq_retention_seconds
  sqs_managed_sse_enabled   = true

  lifecycle {
    precondition {
      condition     = var.dlq_retention_seconds > var.queue_retention_seconds
      error_message = "dlq_retention_seconds must exceed queue_retention_seconds: a message moved to the DLQ keeps its original enqueue time."
    }
  }
}

# Only the orders queue may use this DLQ, so a misconfigured queue elsewhere cannot dump into it.
resource "aws_sqs_queue_redrive_allow_policy" "orders_dlq" {
  queue_url = aws_sqs_queue.orders_dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.orders.arn]
  })
}

# SNS may send to the queue only on behalf of this one topic.
resource "aws_sqs_queue_policy" "orders" {
  queue_url = aws_sqs_queue.orders.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "OrdersTopicDeliversToOrdersQueue"
      Effect    = "Allow"
      Principal = { Service = "sns.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.orders.arn
      Condition = {
        ArnEquals = { "aws:SourceArn" = aws_sns_topic.orders.arn }
      }
    }]
  })
}

# Raw delivery: the queue body is exactly the published WireMessage JSON, no SNS envelope.
resource "aws_sns_topic_subscription" "orders_queue" {
  topic_arn            = aws_sns_topic.orders.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.orders.arn
  raw_message_delivery = true

  # Subscribe only once SNS is allowed to deliver, so no early message is dropped.
  depends_on = [aws_sqs_queue_policy.orders]
}
