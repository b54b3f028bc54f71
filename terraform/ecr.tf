# One repository per service. Both hold the same Dockerfile, built with --target receiver / --target worker.

locals {
  services = toset(["receiver", "worker"])
}

resource "aws_ecr_repository" "service" {
  for_each = local.services

  name                 = "${var.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE" # a tag always names the same image, so a task never runs a surprise build
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS" # AWS-managed aws/ecr key
  }
}

# Expire untagged images only. Every tag is a release that a task definition may name: the running
# one, or the one a rollback returns to (`terraform apply -var image_tag=<previous>`). A count- or
# age-based rule on tagged images would sooner or later delete an image a task still runs, and the next
# task start (a scale-out, a replaced Spot task) would fail to pull it. Untagged images are only left
# behind by interrupted pushes; the build pushes single-platform images without attestations
# (`--provenance=false`), so no tagged image index depends on an untagged child manifest. Kept
# releases cost ECR storage ($0.10 per GB-month of compressed layers); delete old ones by hand
# (`aws ecr batch-delete-image`) once no task definition in use names them.
resource "aws_ecr_lifecycle_policy" "service" {
  for_each = aws_ecr_repository.service

  repository = each.value.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images 7 days after their push; tagged releases are never expired"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 7 }
        action       = { type = "expire" }
      },
    ]
  })
}
