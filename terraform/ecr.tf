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

# Keep storage (and scan findings) bounded: untagged layers go after a day, old releases after 10.
resource "aws_ecr_lifecycle_policy" "service" {
  for_each = aws_ecr_repository.service

  repository = each.value.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images after 1 day"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 1 }
        action       = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the 10 most recent images"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 10 }
        action       = { type = "expire" }
      },
    ]
  })
}
