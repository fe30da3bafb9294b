// Package awsx builds aws.Config for Sortie's services and classifies AWS errors.
package awsx

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// ForEndpoint returns a config that sends every client to one endpoint (the local cloud,
// kumo or LocalStack) with static test credentials in us-east-1. For tests and `sortie dev`.
func ForEndpoint(endpoint string) aws.Config {
	return aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		BaseEndpoint: aws.String(endpoint),
	}
}
