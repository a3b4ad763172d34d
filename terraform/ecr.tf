# The image registry. Terraform owns the repository; scripts/push.py only pushes to it.
resource "aws_ecr_repository" "this" {
  name = var.name
  # A tag names one image forever: a deployment of a commit is reproducible and rollbacks are exact.
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

# What may expire. Every task definition revision stays registered (task.tf, skip_destroy) and is
# a way back: a rollback (ECS's own, deploy.py's, models.py's) to a revision whose image expired
# fails to pull, with the bad release still serving. ECR's lifecycle rules cannot see which images
# revisions name, so:
#   - untagged images expire after 7 days: no revision names them (every push is a tag, and tags
#     are immutable, so an image never loses its tag);
#   - tagged images expire only beyond the ecr_keep_images (500) most recent, a count no rollback
#     reaches back to in practice, kept as a bound on storage rather than as a retention policy
#     (the images share their CUDA and torch layers, which ECR stores once per repository);
#   - and the scripts check before they roll back: deploy.py and models.py refuse a target revision
#     whose image is gone from the repository instead of starting a rollout that cannot pull.
# Not "never expire": a repository that only grows costs money for images nobody can name any more,
# and a count that small deployments never reach is the same guarantee for them.
resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images (interrupted pushes) after 7 days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the ${var.ecr_keep_images} most recent tagged images: task definition revisions name them, and rollbacks need them"
        selection = {
          tagStatus      = "tagged"
          tagPatternList = ["*"]
          countType      = "imageCountMoreThan"
          countNumber    = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ]
  })
}
