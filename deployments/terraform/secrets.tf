# The stack's secrets: the secrets bucket (the fleets' login key under keys/, the ops
# configuration under config/), its KMS key, and the Secrets Manager secret holding
# SORTIE_HOSTKEY_SECRET. Names from pkg/bus Topology: SecretsBucketName, HostKeySecretName.
# No recipe may fetch from this bucket (the fetch_buckets validation, the bootstrapper's own
# check) and no role but the services' reads it.

locals {
  secrets_bucket  = "${var.prefix}-secrets"
  hostkey_secret  = "${var.prefix}/hostkey-secret"
  ssh_key_object  = "keys/${var.ssh_key_name}.pem"
  ops_config_path = "config/ops.yaml"
}

resource "aws_kms_key" "secrets" {
  description             = "Sortie ${var.prefix} secrets (S3 SSE-KMS, Secrets Manager)"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
}

resource "aws_kms_alias" "secrets" {
  name          = "alias/${var.prefix}-secrets"
  target_key_id = aws_kms_key.secrets.key_id
}

resource "aws_s3_bucket" "secrets" {
  bucket        = local.secrets_bucket
  force_destroy = false
}

# Encryption, public access block and bucket policy: main.tf's "hardened" resources, as the
# log bucket's.

# The ops configuration, when given: the services read it through SORTIE_CONFIG.
resource "aws_s3_object" "ops_config" {
  count = var.ops_config == "" ? 0 : 1

  bucket                 = aws_s3_bucket.secrets.id
  key                    = local.ops_config_path
  content                = var.ops_config
  content_type           = "application/yaml"
  server_side_encryption = "aws:kms"
  kms_key_id             = aws_kms_key.secrets.arn
}

# SORTIE_HOSTKEY_SECRET: 48 random bytes, base64. ECS hands it to the provisioner through the
# execution role; it never appears in the task definition.
resource "random_bytes" "hostkey_secret" {
  length = 48
}

resource "aws_secretsmanager_secret" "hostkey" {
  name       = local.hostkey_secret
  kms_key_id = aws_kms_key.secrets.arn
}

resource "aws_secretsmanager_secret_version" "hostkey" {
  secret_id     = aws_secretsmanager_secret.hostkey.id
  secret_string = random_bytes.hostkey_secret.base64
}
