# One customer-managed key ($1/month) encrypts the orders topic, the alarm topic, the log groups and
# the order ledger table. A customer-managed key (rather than the AWS-managed aws/sns key) is needed
# because CloudWatch alarms cannot publish to a topic encrypted with aws/sns, and CloudWatch Logs only
# takes a customer-managed key. The queues use SSE-SQS (no key to manage, and SNS can deliver to it).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
}

resource "aws_kms_key" "main" {
  description             = "${var.name}: SNS topics, CloudWatch log groups and the order ledger table"
  enable_key_rotation     = true
  deletion_window_in_days = 7

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Standard first statement: the account's IAM policies decide who may use the key
        # (the receiver's task role gets GenerateDataKey/Decrypt through SNS, both task roles
        # through DynamoDB for the ledger table). Whoever applies the stack uses the key through
        # DynamoDB too: creating the table creates a KMS grant for it.
        Sid       = "AccountAdministersKeyThroughIam"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncryptsThisAccountsLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
          }
        }
      },
      {
        Sid       = "CloudWatchAlarmsPublishToEncryptedAlarmTopic"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
        # Only this stack's alarms (all named "<name>-...").
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
          ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:${var.name}-*" }
        }
      },
      {
        # As in the key policy AWS gives its own aws/dynamodb key: DynamoDB reads the key's metadata
        # directly to check that it is still usable (a table whose key stays inaccessible is archived).
        Sid       = "DynamoDbDescribesKeyOfLedgerTable"
        Effect    = "Allow"
        Principal = { Service = "dynamodb.amazonaws.com" }
        Action    = ["kms:Describe*", "kms:Get*", "kms:List*"]
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}
